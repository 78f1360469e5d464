"""The `make run` launcher on embedded defaults: a service that dies stops the others."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

from chorus.core.testing import free_port

from .conftest import REPO


def test_a_dying_service_is_reported_and_the_rest_are_stopped(tmp_path):
    env = {
        **os.environ,
        "CHORUS_DATA_DIR": str(tmp_path / "data"),
        "CHORUS_DATABASE_URL": "",
        "CHORUS_REDIS_URL": "",
        "CHORUS_GRACE_PERIOD_S": "3",
        **{
            f"CHORUS_{n}_PORT": str(free_port())
            for n in ("PROVIDER", "HISTORY", "ORCHESTRATOR", "GATEWAY")
        },
    }
    env.pop("CHORUS_INTERNAL_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chorus.cli.stack"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "all services SERVING" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        ready.wait(90)
        assert any("all services SERVING" in line for line in lines), "".join(lines[-30:])
        pids = {
            m.group(1): int(m.group(2))
            for line in lines
            if (m := re.search(r"started (\w+) \(pid (\d+)\)", line))
        }
        assert set(pids) == {"provider", "history", "orchestrator", "gateway"}
        assert "embedded SQLite" in "".join(lines)
        os.kill(pids["provider"], signal.SIGKILL)
        assert proc.wait(30) == 1
        text = "".join(lines)
        assert "provider exited unexpectedly" in text
        for name in ("history", "orchestrator", "gateway"):
            assert not os.path.exists(f"/proc/{pids[name]}") or _is_zombie(pids[name]), (
                f"{name} still running"
            )
    finally:
        if proc.poll() is None:
            proc.kill()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
