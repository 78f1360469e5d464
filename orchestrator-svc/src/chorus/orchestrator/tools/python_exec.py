"""The `run_python` tool: runs model-written Python in a child process.

Offered only when `CHORUS_CODE_EXECUTION_ENABLED=true`. The child runs `python -I` (isolated
mode: no user site, no environment variables), in a fresh temporary directory, with an empty
environment, CPU-time and memory limits and a wall-clock timeout; its output is truncated.
This limits accidents, it is **not** a security sandbox: enable it only where the process
itself is sandboxed (container without secrets or network).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import tempfile

MAX_OUTPUT_BYTES = 64 * 1024
"""Output kept (stdout then stderr); the rest is cut."""
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024
"""Address-space limit of the child."""


def _limits(cpu_seconds: int) -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


async def run_python(code: str, *, timeout_s: float) -> str:
    """Run `code` with `python -I -c` and return its exit code and output.

    Raises:
        TimeoutError: the child ran longer than `timeout_s` (it is killed).
    """
    cpu = max(1, int(timeout_s) + 1)
    with tempfile.TemporaryDirectory(prefix="chorus-run-python-") as workdir:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-c",
            code,
            cwd=workdir,
            env={},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: _limits(cpu),
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
    text = out.decode(errors="replace")
    if err:
        text += ("\n" if text else "") + "[stderr]\n" + err.decode(errors="replace")
    if len(text) > MAX_OUTPUT_BYTES:
        text = text[:MAX_OUTPUT_BYTES] + "\n[output truncated]"
    return f"exit code {proc.returncode}\n{text}"
