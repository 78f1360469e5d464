"""Helpers of the CLI suite: the `chorus` command run as a real process (its output a pipe).

`conftest.py` puts this directory on `sys.path` (pytest runs in importlib mode).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

CHORUS_COMMAND = (sys.executable, "-c", "from chorus.cli.main import app; app()")
"""`chorus` as the installed entry point runs it, from this interpreter."""


@dataclass
class Done:
    """A finished `chorus` process: its exit code and what it printed."""

    code: int
    out: str
    err: str


async def run_chorus(*args: str, env: Mapping[str, str], timeout: float = 120) -> Done:
    """`chorus ARGS` as a process whose environment is this one's plus `env`; waits up to
    `timeout` seconds for it to exit."""
    proc = await asyncio.create_subprocess_exec(
        *CHORUS_COMMAND,
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())
