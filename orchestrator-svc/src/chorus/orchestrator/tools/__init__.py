"""Tools agents can call: the registry (`registry`) and the built-ins (one module each)."""
