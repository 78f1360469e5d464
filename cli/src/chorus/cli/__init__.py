"""chorus.cli — the `chorus` command and the local stack launcher."""
