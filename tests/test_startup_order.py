"""Services started together in any order (`make run`, a deployment): the orchestrator's
startup recovery sweep waits for history-svc's health instead of failing on every start."""

from __future__ import annotations

import json
import time
from pathlib import Path

from chorus.core.testing import ServiceProcess, free_port

from .conftest import service_env


def _events(proc: ServiceProcess) -> list[str]:
    out = []
    for line in list(proc.lines):
        try:
            out.append(str(json.loads(line).get("event")))
        except ValueError:
            continue
    return out


def _wait_event(proc: ServiceProcess, event: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while event not in _events(proc):
        assert proc.proc.poll() is None, "\n".join(proc.lines[-30:])
        assert time.monotonic() < deadline, f"no {event!r}:\n" + "\n".join(proc.lines[-30:])
        time.sleep(0.05)


def test_the_startup_sweep_waits_for_history_svc_started_after_the_orchestrator(
    tmp_path: Path,
) -> None:
    history_port = free_port()
    orchestrator = ServiceProcess(
        "chorus.orchestrator",
        env={
            **service_env(tmp_path, "CHORUS_ORCHESTRATOR_PORT"),
            "CHORUS_HISTORY_ADDRESS": f"127.0.0.1:{history_port}",
        },
    )
    history = None
    try:
        orchestrator.wait_ready()
        _wait_event(orchestrator, "orchestrator_ready", 30)
        # history-svc is not there yet: the sweep waits (it used to fail at once)
        history = ServiceProcess(
            "chorus.history",
            env=service_env(tmp_path, "CHORUS_HISTORY_PORT")
            | {"CHORUS_HISTORY_PORT": str(history_port)},
        )
        history.wait_ready()
        _wait_event(orchestrator, "startup_sweep_done", 60)
        events = _events(orchestrator)
        assert "startup_sweep_failed" not in events, "\n".join(orchestrator.lines)
        assert events.index("orchestrator_ready") < events.index("startup_sweep_done")
    finally:
        orchestrator.stop()
        if history is not None:
            history.stop()
