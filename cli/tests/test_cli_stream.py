"""`chorus run` / `chorus watch` against a fake RunService (a real grpc.aio server on port 0)
whose first stream fails UNAVAILABLE after some events — the replica serving it went away —
and whose next call serves the rest, a `run_resumed` included: the CLI follows the run
again after the last seq it printed, without a gap or a repeat, and replaces the
interrupted turn's partial message. Final errors, a spent reattach budget and a stack that
is not there fail as before. The CLI runs as a real process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from cli_helpers import Done, fake_run_service, run_chorus

from chorus.core.server import GrpcServer
from chorus.v1 import chat_pb2, conversation_pb2, run_pb2, run_service_pb2_grpc, team_pb2
from chorus.v1 import run_service_pb2 as rs

RUN_ID = "r1"
RESUMED_LINE = "— run resumed (attempt 2) from seq 6: the interrupted turn restarts —"


def script() -> list[run_pb2.RunEvent]:
    """Ada's whole turn (2–6, a checkpoint at 6), Blaise's turn cut off after a tool call
    started and a partial word (7–9), the resume from 6 (10), Blaise's turn again, the end."""

    def event(agent: str = "", **payload: object) -> run_pb2.RunEvent:
        return run_pb2.RunEvent(run_id=RUN_ID, agent=agent, **payload)  # type: ignore[arg-type]

    team = team_pb2.TeamSpec(
        agents=[team_pb2.AgentSpec(name="Ada"), team_pb2.AgentSpec(name="Blaise")]
    )
    run = run_pb2.Run(id=RUN_ID, spec=run_pb2.RunSpec(template="duet", team=team, max_turns=2))
    E = run_pb2.RunEvent
    events = [
        event(run_started=E.RunStarted(run=run)),
        event("Ada", agent_started=E.AgentStarted(turn=1)),
        event("Ada", text_delta=E.TextDelta(text="Tabs are")),
        event("Ada", text_delta=E.TextDelta(text=" fine.")),
        event(
            "Ada",
            message_completed=E.MessageCompleted(
                message=conversation_pb2.Message(content="Tabs are fine.")
            ),
        ),
        event("Ada", agent_finished=E.AgentFinished()),
        event("Blaise", agent_started=E.AgentStarted(turn=2)),
        event(
            "Blaise",
            tool_call_started=E.ToolCallStarted(call=chat_pb2.ToolCall(name="VOIDCALL")),
        ),
        event("Blaise", text_delta=E.TextDelta(text="PARTIALWORD")),
        event(run_resumed=E.RunResumed(attempt=2, from_seq=6, reason="OWNER_LOST")),
        event("Blaise", agent_started=E.AgentStarted(turn=2)),
        event("Blaise", text_delta=E.TextDelta(text="Spaces win.")),
        event(
            "Blaise",
            message_completed=E.MessageCompleted(
                message=conversation_pb2.Message(content="Spaces win.")
            ),
        ),
        event("Blaise", agent_finished=E.AgentFinished()),
        event(run_completed=E.RunCompleted(final_answer="Spaces win.", agents=["Ada", "Blaise"])),
    ]
    for seq, e in enumerate(events, start=1):
        e.seq = seq
    return events


@dataclass
class FakeRuns(run_service_pb2_grpc.RunServiceServicer):
    """StreamRun / WatchRun of `script()`: each call sends the events after its
    `after_seq`; the first `fail_first` calls end with `first_code` once they sent up to
    seq `cut` (0: at once). Records each call as (method, run_id, after_seq)."""

    cut: int = 9
    fail_first: int = 1
    ending: run_pb2.RunEvent | None = None
    """Replaces the script's last event (run_completed) when set."""
    first_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    async def _serve(
        self, context: grpc.aio.ServicerContext, after_seq: int
    ) -> AsyncIterator[run_pb2.RunEvent]:
        failing = len(self.calls) <= self.fail_first
        events = script()
        if self.ending is not None:
            events[-1] = run_pb2.RunEvent(run_id=RUN_ID, seq=events[-1].seq)
            events[-1].MergeFrom(self.ending)
        for event in events:
            if event.seq <= after_seq:
                continue
            if failing and event.seq > self.cut:
                break
            yield event
        if failing:
            await context.abort(self.first_code, "the replica went away")

    async def StreamRun(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(("StreamRun", "", 0))
        async for event in self._serve(context, 0):
            yield rs.StreamRunResponse(event=event)

    async def WatchRun(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(("WatchRun", request.run_id, request.after_seq))
        async for event in self._serve(context, request.after_seq):
            yield rs.WatchRunResponse(event=event)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeRuns, GrpcServer]]:
    servicer = FakeRuns()
    async with fake_run_service(servicer) as server:
        yield servicer, server


async def chorus(address: str, *args: str, timeout: float = 60) -> Done:
    """Run the `chorus` command as a process against `address`."""
    env = {
        "CHORUS_ORCHESTRATOR_ADDRESS": address,
        "CHORUS_USER": "dev",
        "CHORUS_INTERNAL_TOKEN": "",
        "COLUMNS": "200",
    }
    return await run_chorus(*args, env=env, timeout=timeout)


def assert_whole_run_once(out: str) -> None:
    """The whole run, each part once, in order; nothing of the interrupted turn."""
    for part in ("Tabs are fine.", RESUMED_LINE, "Blaise ▸ Spaces win.", "final answer"):
        assert out.count(part) == 1, (part, out)
    assert out.index("Tabs are fine.") < out.index(RESUMED_LINE) < out.index("Spaces win.")
    assert "VOIDCALL" not in out and "PARTIALWORD" not in out, out


async def test_watch_follows_the_run_again_after_the_last_seq_it_printed(fake):
    servicer, server = fake
    done = await chorus(server.address, "watch", RUN_ID)
    assert done.code == 0, done
    assert_whole_run_once(done.out)
    assert "lost the orchestrator (UNAVAILABLE)" in done.out + done.err
    assert servicer.calls == [("WatchRun", RUN_ID, 0), ("WatchRun", RUN_ID, 9)]


async def test_run_follows_its_started_run_again_with_watch_run(fake):
    servicer, server = fake
    done = await chorus(server.address, "run", "duet", "--input", "Tabs or spaces?")
    assert done.code == 0, done
    assert_whole_run_once(done.out)
    assert servicer.calls == [("StreamRun", "", 0), ("WatchRun", RUN_ID, 9)]


async def test_watch_after_a_seq_reattaches_after_the_last_printed_one(fake):
    servicer, server = fake
    servicer.cut = 12
    done = await chorus(server.address, "watch", RUN_ID, "--after", "10")
    assert done.code == 0, done
    assert "Spaces win." in done.out and "Tabs are fine." not in done.out
    assert servicer.calls == [("WatchRun", RUN_ID, 10), ("WatchRun", RUN_ID, 12)]


async def test_a_final_error_is_not_retried(fake):
    servicer, server = fake
    servicer.first_code = grpc.StatusCode.PERMISSION_DENIED
    done = await chorus(server.address, "watch", RUN_ID)
    assert done.code == 4, done
    assert "PERMISSION_DENIED" in done.err
    assert f"chorus watch {RUN_ID} --after 9" in done.err
    assert len(servicer.calls) == 1


async def test_the_command_fails_once_the_reattach_time_is_spent(fake):
    servicer, server = fake
    servicer.fail_first = 1000  # every call fails, having nothing new to send
    loop = asyncio.get_running_loop()
    began = loop.time()
    done = await chorus(server.address, "--reattach-s", "1", "watch", RUN_ID)
    assert done.code == 4, done
    assert "UNAVAILABLE" in done.err and "--after 9" in done.err
    assert len(servicer.calls) >= 2 and all(c[2] == 9 for c in servicer.calls[1:])
    assert loop.time() - began < 30


async def test_a_stream_that_fails_before_any_event_fails_at_once(fake):
    servicer, server = fake
    servicer.cut = 0
    done = await chorus(server.address, "watch", RUN_ID)
    assert done.code == 4, done
    assert len(servicer.calls) == 1


async def test_reattach_can_be_turned_off(fake):
    servicer, server = fake
    done = await chorus(server.address, "--reattach-s", "0", "watch", RUN_ID)
    assert done.code == 4, done
    assert len(servicer.calls) == 1


async def test_several_addresses_are_accepted_and_a_bad_list_is_a_usage_error(fake):
    servicer, server = fake
    servicer.fail_first = 0
    port = server.address.rsplit(":", 1)[1]
    done = await chorus(f"127.0.0.1:{port},localhost:{port}", "watch", RUN_ID)
    assert done.code == 0, done
    bad = await chorus("orch-a:1,orch-b:2", "watch", RUN_ID)
    assert bad.code == 2 and "dns:///name:port" in bad.err, bad


@pytest.mark.parametrize(
    ("ending", "code", "line"),
    [
        (
            run_pb2.RunEvent(
                run_failed=run_pb2.RunEvent.RunFailed(
                    error=run_pb2.RunError(message="the model is gone", reason="MODEL_ERROR")
                )
            ),
            1,
            "run failed: the model is gone (MODEL_ERROR; retryable=False)",
        ),
        (
            run_pb2.RunEvent(
                run_cancelled=run_pb2.RunEvent.RunCancelled(
                    cancellation=run_pb2.Cancellation(requested_by="bob", reason="enough")
                )
            ),
            3,
            "run cancelled by bob: enough",
        ),
    ],
)
async def test_a_failed_run_exits_1_and_a_cancelled_one_3(fake, ending, code, line):
    servicer, server = fake
    servicer.fail_first, servicer.ending = 0, ending
    for args in (("run", "duet", "--input", "Tabs or spaces?"), ("watch", RUN_ID)):
        done = await chorus(server.address, *args)
        assert done.code == code, (args, done)
        assert line in done.out and "final answer" not in done.out, done.out
