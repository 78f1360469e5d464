"""Issue 23 items 7 and 8 in the CLI.

* Every message is printed under its own agent: a MagenticOne orchestrator's instructions
  were printed under the previous agent's name ("market_analyst ▸ technical_analyst, please
  work on…").
* `chorus runs artifacts RUN_ID -o DIR` saves a run's charts; `chorus runs delete RUN_ID`
  deletes a run. Both against the real services (processes on port 0, embedded storage).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cli_helpers import Done, run_chorus
from rich.console import Console

from chorus.cli.render import RunRenderer
from chorus.core.testing import backend_processes
from chorus.v1 import conversation_pb2, run_pb2, run_service_pb2_grpc
from chorus.v1 import run_service_pb2 as rs

TOKEN = "cli-test-internal-token"
ORCHESTRATOR = "MagenticOneOrchestrator"
E = run_pb2.RunEvent


def _message(agent: str, text: str) -> run_pb2.RunEvent:
    return E(
        agent=agent,
        message_completed=E.MessageCompleted(message=conversation_pb2.Message(content=text)),
    )


def magentic_events() -> list[run_pb2.RunEvent]:
    """A MagenticOne run's shape: the orchestrator's facts and plan (messages outside any
    turn, not streamed), an analyst's turn, the orchestrator's instruction, the next
    analyst's turn with a chart, the orchestrator's final answer."""
    events = [
        E(run_started=E.RunStarted(run=run_pb2.Run(id="r1"))),
        _message(ORCHESTRATOR, "FACTS AND PLAN"),
        E(agent="market_analyst", agent_started=E.AgentStarted(turn=1)),
        E(agent="market_analyst", text_delta=E.TextDelta(text="BTC trades at 64,000 USD.")),
        _message("market_analyst", "BTC trades at 64,000 USD."),
        E(agent="market_analyst", agent_finished=E.AgentFinished(turn=1)),
        _message(ORCHESTRATOR, "technical_analyst, please work on the indicators."),
        E(agent="technical_analyst", agent_started=E.AgentStarted(turn=2)),
        E(
            agent="technical_analyst",
            artifact=E.Artifact(name="BTC-30d.svg", mime_type="image/svg+xml", data=b"<svg/>"),
        ),
        E(agent="technical_analyst", text_delta=E.TextDelta(text="The trend is up.")),
        _message("technical_analyst", "The trend is up."),
        E(agent="technical_analyst", agent_finished=E.AgentFinished(turn=2)),
        _message(ORCHESTRATOR, "FINAL ANSWER"),
        E(run_completed=E.RunCompleted(final_answer="FINAL ANSWER")),
    ]
    for seq, event in enumerate(events, start=1):
        event.run_id, event.seq = "r1", seq
    return events


def test_every_message_is_printed_under_its_own_agent_in_order() -> None:
    console = Console(record=True, width=200, force_terminal=False)
    with RunRenderer(console) as renderer:
        for event in magentic_events():
            renderer.handle(event)
    text = console.export_text()
    lines = [line.strip() for line in text.splitlines() if "▸" in line]
    assert lines == [
        f"{ORCHESTRATOR} ▸ FACTS AND PLAN",
        "market_analyst ▸ BTC trades at 64,000 USD.",
        f"{ORCHESTRATOR} ▸ technical_analyst, please work on the indicators.",
        "technical_analyst ▸ The trend is up.",
        f"{ORCHESTRATOR} ▸ FINAL ANSWER",
    ]
    assert "technical_analyst attached BTC-30d.svg" in text


# --------------------------------------------------------------------------- real services
@dataclass
class Stack:
    orchestrator: str
    history: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """provider-svc (simulator), history-svc (SQLite) and orchestrator-svc as processes."""
    env = {
        "CHORUS_INTERNAL_TOKEN": TOKEN,
        "CHORUS_DEV_MODE": "false",
        "CHORUS_DATA_DIR": str(tmp_path_factory.mktemp("cli-stack")),
        "CHORUS_DATABASE_URL": "",
        "CHORUS_REDIS_URL": "",
        "CHORUS_GRACE_PERIOD_S": "2",
        "CHORUS_SIMULATOR_TIME_TO_FIRST_TOKEN_S": "0.01",
        "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "2000",
    }
    with backend_processes(env) as b:
        yield Stack(b.orchestrator, b.history)


async def chorus(stack: Stack, *args: str, user: str, timeout: float = 120) -> Done:
    """The `chorus` command as a process against `stack`."""
    env = {
        "CHORUS_ORCHESTRATOR_ADDRESS": stack.orchestrator,
        "CHORUS_HISTORY_ADDRESS": stack.history,
        "CHORUS_USER": user,
        "CHORUS_INTERNAL_TOKEN": TOKEN,
        "COLUMNS": "200",
    }
    return await run_chorus(*args, env=env, timeout=timeout)


async def _crypto_run(stack: Stack, user: str) -> list[run_pb2.RunEvent]:
    md = (("x-chorus-user", user), ("x-chorus-internal-token", TOKEN))
    async with grpc.aio.insecure_channel(stack.orchestrator) as channel:
        stub = run_service_pb2_grpc.RunServiceStub(channel)
        spec = run_pb2.RunSpec(template="crypto-analysts", input="Analyse BTC and ETH briefly.")
        call = stub.StreamRun(rs.StreamRunRequest(spec=spec), metadata=md, timeout=120)
        return [r.event async for r in call]


async def test_runs_artifacts_saves_each_chart_of_the_run(stack: Stack, tmp_path: Path) -> None:
    user = f"cli-{uuid.uuid4().hex[:8]}"
    events = await _crypto_run(stack, user)
    assert events[-1].HasField("run_completed")
    charts = [e.artifact for e in events if e.HasField("artifact")]
    assert charts
    out_dir = tmp_path / "charts"
    done = await chorus(stack, "runs", "artifacts", events[0].run_id, "-o", str(out_dir), user=user)
    assert done.code == 0, done
    saved = sorted(out_dir.iterdir())
    assert len(saved) == len(charts)
    assert {p.read_bytes() for p in saved} == {c.data for c in charts}
    assert charts[0].name in done.out and "image/svg+xml" in done.out


async def test_runs_artifacts_of_an_unknown_run_fails_not_found(
    stack: Stack, tmp_path: Path
) -> None:
    done = await chorus(
        stack, "runs", "artifacts", str(uuid.uuid4()), "-o", str(tmp_path), user="cli-x"
    )
    assert done.code == 4, done
    assert "NOT_FOUND" in done.err


async def test_runs_delete_deletes_the_run(stack: Stack) -> None:
    user = f"cli-{uuid.uuid4().hex[:8]}"
    events = await _crypto_run(stack, user)
    run_id = events[0].run_id
    done = await chorus(stack, "runs", "delete", run_id, user=user)
    assert done.code == 0, done
    again = await chorus(stack, "runs", "show", run_id, user=user)
    assert again.code == 4 and "NOT_FOUND" in again.err
    deleted_twice = await chorus(stack, "runs", "delete", run_id, user=user)
    assert deleted_twice.code == 4 and "NOT_FOUND" in deleted_twice.err


def test_an_artifact_name_with_a_path_stays_in_the_directory(tmp_path: Path) -> None:
    from chorus.cli.main import _artifact_file

    taken: set[str] = set()
    assert _artifact_file(tmp_path, "../../etc/passwd", taken) == tmp_path / "passwd"
    assert _artifact_file(tmp_path, "a/b/chart.svg", taken) == tmp_path / "chart.svg"
    assert _artifact_file(tmp_path, "chart.svg", taken) == tmp_path / "chart-2.svg"
    assert _artifact_file(tmp_path, "..", taken) == tmp_path / "artifact"
