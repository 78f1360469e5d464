"""`python -m chorus.gateway`'s command line (typer, issue 24 item 4): help, exit codes and
bad options. Serving itself is tested everywhere else (`gateway_helpers.start_gateway`);
the configuration errors (exit 2) in test_gateway_settings.py."""

from __future__ import annotations

import json
import subprocess
import sys

import bcrypt
import pytest
from typer.testing import CliRunner

from chorus.gateway.__main__ import cli
from chorus.gateway.auth import hash_api_key

runner = CliRunner()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_commands(flag: str) -> None:
    result = runner.invoke(cli, [flag], prog_name="python -m chorus.gateway")
    assert result.exit_code == 0
    assert "Usage: python -m chorus.gateway" in result.output
    for command in ("serve", "hash-password", "new-api-key"):
        assert command in result.output


def test_new_api_key_help_names_its_required_option() -> None:
    result = runner.invoke(cli, ["new-api-key", "--help"])
    assert result.exit_code == 0
    assert "--user" in result.output
    assert "required" in result.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["new-api-key"], "Missing option '--user'"),
        (["new-api-key", "--user"], "requires an argument"),
        (["new-api-key", "--user", "bob", "extra"], "Got unexpected extra argument"),
        (["new-api-key", "--name", "bob"], "No such option"),
        (["bogus"], "No such command 'bogus'"),
        (["--port", "8000"], "No such option"),
        (["serve", "--verbose"], "No such option"),
        (["hash-password", "secret"], "Got unexpected extra argument"),
    ],
)
def test_a_bad_command_line_exits_2_naming_the_problem(argv: list[str], message: str) -> None:
    result = runner.invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_new_api_key_prints_a_key_and_its_entry() -> None:
    result = runner.invoke(cli, ["new-api-key", "--user", "dave"])
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    key = first.rsplit(" ", 1)[1]
    assert json.loads(second.split(": ", 1)[1]) == {hash_api_key(key): "dave"}


def test_hash_password_hashes_the_first_line_of_stdin() -> None:
    result = runner.invoke(cli, ["hash-password"], input="long-enough\nignored\n")
    assert result.exit_code == 0, result.output
    assert bcrypt.checkpw(b"long-enough", result.output.strip().encode())


def test_hash_password_refuses_a_short_password_with_exit_1() -> None:
    result = runner.invoke(cli, ["hash-password"], input="short\n")
    assert result.exit_code == 1
    assert "use at least 8 characters" in result.output


def test_the_module_entry_point_exits_with_typers_codes() -> None:
    """The real `python -m` entry point: help 0, a bad option 2 (usage on stderr)."""
    ok = subprocess.run(
        [sys.executable, "-m", "chorus.gateway", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0
    assert "new-api-key" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "chorus.gateway", "new-api-key"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "Missing option '--user'" in bad.stderr
    assert bad.stdout == ""


def test_serve_command_refuses_a_bad_setting_with_exit_2() -> None:
    """`serve` named explicitly behaves as the default command (exit 2, one log line)."""
    done = subprocess.run(
        [sys.executable, "-m", "chorus.gateway", "serve"],
        env={
            "PATH": "/usr/bin:/bin",
            "CHORUS_INTERNAL_TOKEN": "t",
            "CHORUS_GATEWAY_PORT": "0",
            "CHORUS_GATEWAY_HOST": "0.0.0.0",
            "CHORUS_AUTH_MODE": "none",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    record = json.loads(done.stderr.strip().splitlines()[-1])
    assert record["event"] == "configuration_error"
