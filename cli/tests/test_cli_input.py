"""Human in the loop in the CLI (issue 21 item 4), against a fake RunService (a real grpc.aio
server on port 0) that plays a run asking for input and answers SubmitRunInput as the
contract says (first answer wins, request_id repeats, INPUT_NOT_PENDING, NOT_FOUND,
INVALID_ARGUMENT) — so every branch is exercised exactly, whatever a real team does. The
CLI runs as a real process; a pseudo-terminal on its stdin makes it ask. The same commands
against the real services: `test_cli_input_e2e.py`.

* `chorus run` on a terminal asks (approve y / deny n + reason / a human agent's text up to
  an empty line), sends SubmitRunInput with a request_id, and streams on to the end;
* answered elsewhere while asking: the prompt is withdrawn, the stream shows who answered;
* stdin not a terminal, `--no-input`, or Ctrl-D: how to answer is printed, exit 6, nothing
  is sent; a replayed request already answered is never asked;
* `chorus runs input` approve / deny / text (also from stdin): the answer as recorded;
  exit 7 for INPUT_NOT_PENDING or a run that does not wait, 4 NOT_FOUND, 2 bad arguments;
* `runs list` / `runs show` of a waiting run; the new events rendered.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from cli_helpers import Done, TtyChorus, fake_run_service, run_chorus
from google.protobuf import timestamp_pb2
from rich.console import Console

from chorus.cli.render import RunRenderer
from chorus.core import errors
from chorus.v1 import chat_pb2, conversation_pb2, run_pb2, run_service_pb2_grpc, team_pb2
from chorus.v1 import run_service_pb2 as rs

E = run_pb2.RunEvent
RUN_ID = "6f1c2a3e-0000-4000-8000-000000000001"
CALL = chat_pb2.ToolCall(id="C1", name="calculator", arguments='{"expression": "0.175 * 2340"}')
EXPIRE = timestamp_pb2.Timestamp(seconds=1_900_000_000)
EDITOR_PROMPT = "Review the draft. Answer APPROVE to publish, or write notes."


def approval_script() -> tuple[list[run_pb2.RunEvent], run_pb2.RunEvent.InputRequested]:
    """An assistant about to call the calculator, waiting for approval (seq 1–5)."""
    team = team_pb2.TeamSpec(agents=[team_pb2.AgentSpec(name="assistant")], max_turns=4)
    run = run_pb2.Run(
        id=RUN_ID, spec=run_pb2.RunSpec(template="assistant-approval", team=team, input="17.5%")
    )
    request = E.InputRequested(
        input_id="turn1-1",
        kind=run_pb2.INPUT_KIND_APPROVAL,
        prompt="assistant wants to call calculator",
        tool_call=CALL,
        expire_time=EXPIRE,
        agent="assistant",
    )
    events = [
        E(run_started=E.RunStarted(run=run)),
        E(agent="assistant", agent_started=E.AgentStarted(turn=1)),
        E(agent="assistant", text_delta=E.TextDelta(text="Let me compute that.")),
        E(agent="assistant", tool_call_started=E.ToolCallStarted(call=CALL)),
        E(agent="assistant", input_requested=request),
    ]
    return events, request


def text_script() -> tuple[list[run_pb2.RunEvent], run_pb2.RunEvent.InputRequested]:
    """A writer's draft, then the human editor's turn waiting for text (seq 1–6)."""
    team = team_pb2.TeamSpec(
        agents=[
            team_pb2.AgentSpec(name="writer"),
            team_pb2.AgentSpec(name="editor", human=True, system_prompt=EDITOR_PROMPT),
        ]
    )
    run = run_pb2.Run(
        id=RUN_ID, spec=run_pb2.RunSpec(template="article-pipeline-reviewed", team=team)
    )
    request = E.InputRequested(
        input_id="turn2-1",
        kind=run_pb2.INPUT_KIND_TEXT,
        prompt=EDITOR_PROMPT,
        expire_time=EXPIRE,
        agent="editor",
    )
    events = [
        E(run_started=E.RunStarted(run=run)),
        E(agent="writer", agent_started=E.AgentStarted(turn=1)),
        E(
            agent="writer",
            message_completed=E.MessageCompleted(
                message=conversation_pb2.Message(content="DRAFT: tabs or spaces")
            ),
        ),
        E(agent="writer", agent_finished=E.AgentFinished(turn=1)),
        E(agent="editor", agent_started=E.AgentStarted(turn=2)),
        E(agent="editor", input_requested=request),
    ]
    return events, request


def _user(context: grpc.aio.ServicerContext) -> str:
    return dict(context.invocation_metadata() or ()).get("x-chorus-user", "?")


@dataclass
class FakeRuns(run_service_pb2_grpc.RunServiceServicer):
    """One run that waits for `request` after `events`; SubmitRunInput records the first
    answer, appends `input_received` and the rest of the run, and ends it. Records each
    SubmitRunInput request in `submits`."""

    events: list[run_pb2.RunEvent]
    request: run_pb2.RunEvent.InputRequested
    submits: list[rs.SubmitRunInputRequest] = field(default_factory=list)
    answered: dict[str, rs.SubmitRunInputResponse] = field(default_factory=dict)
    status: int = run_pb2.RUN_STATUS_AWAITING_INPUT
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        for seq, event in enumerate(self.events, start=1):
            event.run_id, event.seq = RUN_ID, seq

    def run(self) -> run_pb2.Run:
        run = run_pb2.Run(
            id=RUN_ID,
            status=self.status,  # type: ignore[arg-type]
            spec=self.events[0].run_started.run.spec,
            last_seq=len(self.events),
        )
        if self.status == run_pb2.RUN_STATUS_AWAITING_INPUT:
            run.pending_input.CopyFrom(self.request)
        return run

    def append(self, agent: str = "", **payload: object) -> run_pb2.RunEvent:
        event = E(run_id=RUN_ID, seq=len(self.events) + 1, agent=agent, **payload)  # type: ignore[arg-type]
        self.events.append(event)
        return event

    def answer(self, request: rs.SubmitRunInputRequest, by: str) -> rs.SubmitRunInputResponse:
        """Record an answer as SubmitRunInput does; raises ChorusErrors as it does."""
        if request.run_id != RUN_ID:
            raise errors.NotFound(f"run {request.run_id} not found")
        if request.request_id and request.request_id in self.answered:
            return self.answered[request.request_id]
        if self.status != run_pb2.RUN_STATUS_AWAITING_INPUT or (
            request.input_id != self.request.input_id
        ):
            raise errors.FailedPrecondition(
                f"input {request.input_id!r} of run {RUN_ID} is not pending",
                reason="INPUT_NOT_PENDING",
            )
        approval = self.request.kind == run_pb2.INPUT_KIND_APPROVAL
        kind = request.WhichOneof("answer")
        if kind is None or (kind == "text") == approval:
            raise errors.InvalidArgument(
                "the answer does not fit the request",
                violations=[("decision" if approval else "text", "required for this request")],
            )
        received = E.InputReceived(input_id=request.input_id, by=by, request_id=request.request_id)
        if kind == "text":
            received.text = request.text
        else:
            received.decision.CopyFrom(request.decision)
        stored = self.append(self.request.agent, input_received=received)
        self.status = run_pb2.RUN_STATUS_RUNNING
        reply = rs.SubmitRunInputResponse(run=self.run(), event=stored)
        if request.request_id:
            self.answered[request.request_id] = reply
        self._finish(received)
        return reply

    def _finish(self, received: run_pb2.RunEvent.InputReceived) -> None:
        if received.HasField("decision"):
            ok = received.decision.approved
            result = "409.5" if ok else f"denied by {received.by}: {received.decision.reason}"
            self.append(
                "assistant",
                tool_call_finished=E.ToolCallFinished(call=CALL, success=ok, result=result),
            )
            reply = "17.5% of 2,340 is 409.5." if ok else "I may not use the calculator."
        else:
            self.append(
                "editor",
                message_completed=E.MessageCompleted(
                    message=conversation_pb2.Message(content=received.text)
                ),
            )
            reply = "PUBLISHED"
        self.append("assistant", text_delta=E.TextDelta(text=reply))
        self.append(
            "assistant",
            message_completed=E.MessageCompleted(message=conversation_pb2.Message(content=reply)),
        )
        self.append(run_completed=E.RunCompleted(final_answer=reply, agents=["assistant"]))
        self.status = run_pb2.RUN_STATUS_COMPLETED
        self.changed.set()

    async def _serve(self, after_seq: int) -> AsyncIterator[run_pb2.RunEvent]:
        sent = after_seq
        while True:
            self.changed.clear()
            for event in self.events[sent:]:
                yield event
                sent = event.seq
                if event.WhichOneof("payload") == "run_completed":
                    return
            await self.changed.wait()

    async def StreamRun(self, request, context):  # type: ignore[no-untyped-def]
        async for event in self._serve(0):
            yield rs.StreamRunResponse(event=event)

    async def WatchRun(self, request, context):  # type: ignore[no-untyped-def]
        async for event in self._serve(request.after_seq):
            yield rs.WatchRunResponse(event=event)

    async def GetRun(self, request, context):  # type: ignore[no-untyped-def]
        if request.run_id != RUN_ID:
            raise errors.NotFound(f"run {request.run_id} not found")
        return rs.GetRunResponse(run=self.run())

    async def ListRuns(self, request, context):  # type: ignore[no-untyped-def]
        return rs.ListRunsResponse(runs=[self.run()])

    async def SubmitRunInput(self, request, context):  # type: ignore[no-untyped-def]
        self.submits.append(request)
        return self.answer(request, _user(context))


async def _serve(servicer: FakeRuns) -> AsyncIterator[tuple[FakeRuns, str]]:
    async with fake_run_service(servicer) as server:
        yield servicer, server.address


@pytest.fixture
async def approval() -> AsyncIterator[tuple[FakeRuns, str]]:
    async for served in _serve(FakeRuns(*approval_script())):
        yield served


@pytest.fixture
async def text_run() -> AsyncIterator[tuple[FakeRuns, str]]:
    async for served in _serve(FakeRuns(*text_script())):
        yield served


def env_for(address: str, user: str = "alice") -> dict[str, str]:
    return {
        "CHORUS_ORCHESTRATOR_ADDRESS": address,
        "CHORUS_USER": user,
        "CHORUS_INTERNAL_TOKEN": "",
        "COLUMNS": "200",
    }


async def chorus(address: str, *args: str, user: str = "alice", stdin: bytes = b"") -> Done:
    """`chorus ARGS` with stdin a pipe (not a terminal) holding `stdin`."""
    return await run_chorus(*args, env=env_for(address, user), stdin=stdin, timeout=60)


async def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(fn, *args)


RUN_ARGS = ("run", "assistant-approval", "--input", "What is 17.5% of 2,340?")


# --------------------------------------------------------------------- chorus run at a prompt
async def test_run_asks_for_approval_and_streams_on_after_y(approval) -> None:
    fake, address = approval
    tty = TtyChorus(*RUN_ARGS, env=env_for(address))
    try:
        out = await in_thread(tty.expect, "Approve? [y/N]")
        assert "assistant wants to call calculator:" in out, out
        assert "expression: 0.175 * 2340" in out, out
        tty.send("y\n")
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 0, done
    # The renderer's line may reach the terminal after the prompt (it flushes on its own).
    assert "⏸ waiting for approval of calculator" in done.out, done.out
    assert '"expression": "0.175 * 2340"' in done.out and "input turn1-1" in done.out
    assert "✔ approved by alice" in done.out, done.out
    assert "✓ calculator → 409.5" in done.out and "17.5% of 2,340 is 409.5." in done.out
    [sent] = fake.submits
    assert (sent.run_id, sent.input_id) == (RUN_ID, "turn1-1")
    assert sent.decision.approved and uuid.UUID(sent.request_id)
    assert done.out.index("waiting for approval") < done.out.index("approved by alice")


async def test_run_denies_with_a_reason_after_n(approval) -> None:
    fake, address = approval
    tty = TtyChorus(*RUN_ARGS, env=env_for(address))
    try:
        await in_thread(tty.expect, "Approve? [y/N]")
        tty.send("maybe\n")
        await in_thread(tty.expect, "answer y (approve) or n (deny)")
        tty.send("n\n")
        await in_thread(tty.expect, "Reason (optional")
        tty.send("numbers are private\n")
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 0, done
    assert "✖ denied by alice: numbers are private" in done.out, done.out
    assert "✗ calculator → denied by alice: numbers are private" in done.out
    [sent] = fake.submits
    assert not sent.decision.approved and sent.decision.reason == "numbers are private"


async def test_run_takes_a_human_agents_text_up_to_an_empty_line(text_run) -> None:
    fake, address = text_run
    tty = TtyChorus("run", "article-pipeline-reviewed", "-i", "Tabs", env=env_for(address))
    try:
        out = await in_thread(tty.expect, "> ")
        assert "editor asks you:" in out and EDITOR_PROMPT in out, out
        tty.send("\n")  # an empty first line is not an answer
        await in_thread(tty.expect, "an answer cannot be empty")
        tty.send("Shorter, please.\nAnd cite a source.\n\n")
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 0, done
    [sent] = fake.submits
    assert sent.text == "Shorter, please.\nAnd cite a source."
    assert "✔ answered by alice" in done.out
    # The renderer's line may reach the terminal after the prompt (it flushes on its own).
    assert "⏸ waiting for editor's answer — input turn2-1" in done.out, done.out
    assert "editor ▸ Shorter, please." in done.out, done.out


async def test_a_request_answered_elsewhere_withdraws_the_prompt(approval) -> None:
    fake, address = approval
    tty = TtyChorus(*RUN_ARGS, env=env_for(address))
    try:
        await in_thread(tty.expect, "Approve? [y/N]")
        fake.answer(
            rs.SubmitRunInputRequest(
                run_id=RUN_ID,
                input_id="turn1-1",
                decision=run_pb2.ApprovalDecision(approved=True),
            ),
            by="bob",
        )
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 0, done
    assert "input turn1-1 was answered elsewhere" in done.err, done  # questions: stderr
    assert "✔ approved by bob" in done.out and not fake.submits


async def test_ctrl_d_at_the_prompt_leaves_the_run_waiting_exit_6(approval) -> None:
    fake, address = approval
    tty = TtyChorus(*RUN_ARGS, env=env_for(address))
    try:
        await in_thread(tty.expect, "Approve? [y/N]")
        tty.send(b"\x04")
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 6, done
    assert f"chorus runs input {RUN_ID} --input-id turn1-1 --approve" in done.out, done.out
    assert not fake.submits and fake.status == run_pb2.RUN_STATUS_AWAITING_INPUT


async def test_on_a_whole_terminal_the_live_area_gives_way_to_the_prompt(approval) -> None:
    fake, address = approval
    tty = TtyChorus(*RUN_ARGS, env=env_for(address), full_tty=True)
    try:
        await in_thread(tty.expect, "Approve? [y/N]")
        tty.send("y\n")
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 0, done
    assert "approved by alice" in done.out and "409.5" in done.out, done.out
    assert fake.submits[0].decision.approved


async def test_ctrl_c_at_the_prompt_of_watch_detaches_and_the_run_waits(approval) -> None:
    fake, address = approval
    tty = TtyChorus("watch", RUN_ID, env=env_for(address))
    try:
        await in_thread(tty.expect, "Approve? [y/N]")
        tty.proc.send_signal(signal.SIGINT)
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 5, done
    assert f"detached; follow again with: chorus watch {RUN_ID} --after 5" in done.out, done.out
    assert not fake.submits and fake.status == run_pb2.RUN_STATUS_AWAITING_INPUT


# ------------------------------------------------------------------- not asking: exit code 6
async def test_without_a_terminal_run_prints_how_to_answer_and_exits_6(approval) -> None:
    fake, address = approval
    done = await chorus(address, "run", "assistant-approval", "What is 17.5% of 2,340?")
    assert done.code == 6, done
    assert "⏸ waiting for approval of calculator" in done.out
    assert f"run {RUN_ID} waits for approval of calculator(" in done.out, done.out
    assert f"chorus runs input {RUN_ID} --input-id turn1-1 --approve" in done.out
    assert "--deny --reason" in done.out and f"chorus watch {RUN_ID}" in done.out
    assert not fake.submits and fake.status == run_pb2.RUN_STATUS_AWAITING_INPUT


async def test_no_input_does_not_ask_even_on_a_terminal(text_run) -> None:
    fake, address = text_run
    tty = TtyChorus(*RUN_ARGS, "--no-input", env=env_for(address))
    try:
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 6, done
    assert "a text answer for editor (input turn2-1)" in done.out, done.out
    assert "--input-id turn2-1 --text 'your answer'" in done.out
    assert "> " not in done.out.replace("▸ ", "") and not fake.submits


async def test_watch_without_a_terminal_exits_6_then_runs_input_lets_it_finish(approval) -> None:
    _fake, address = approval
    waiting = await chorus(address, "watch", RUN_ID)
    assert waiting.code == 6, waiting
    answered = await chorus(address, "runs", "input", RUN_ID, "--approve")
    assert answered.code == 0, answered
    assert answered.out.strip() == (
        f"✔ approved by alice — input turn1-1 of run {RUN_ID} (seq 6); the run is running"
    )
    rest = await chorus(address, "watch", RUN_ID, "--after", "5")
    assert rest.code == 0, rest
    assert "✔ approved by alice" in rest.out and "final answer" in rest.out


async def test_a_replayed_request_that_was_answered_is_not_asked(approval) -> None:
    fake, address = approval
    fake.answer(
        rs.SubmitRunInputRequest(
            run_id=RUN_ID, input_id="turn1-1", decision=run_pb2.ApprovalDecision(approved=True)
        ),
        by="bob",
    )
    piped = await chorus(address, "watch", RUN_ID)  # not a terminal: would exit 6 if asked
    assert piped.code == 0, piped
    tty = TtyChorus("watch", RUN_ID, env=env_for(address))
    try:
        done = await in_thread(tty.wait)
    finally:
        tty.kill()
    assert done.code == 0, done
    assert "Approve?" not in done.out and "✔ approved by bob" in done.out


# --------------------------------------------------------------------------- chorus runs input
async def test_runs_input_deny_with_a_reason(approval) -> None:
    fake, address = approval
    done = await chorus(address, "runs", "input", RUN_ID, "--deny", "--reason", "not now")
    assert done.code == 0, done
    assert done.out.startswith("✖ denied by alice: not now — input turn1-1"), done.out
    [sent] = fake.submits
    assert sent.input_id == "turn1-1" and not sent.decision.approved
    assert sent.decision.reason == "not now" and sent.request_id


async def test_runs_input_text_inline_and_from_stdin(text_run) -> None:
    fake, address = text_run
    done = await chorus(
        address, "runs", "input", RUN_ID, "--text", "-", stdin=b"Line one.\nLine two.\n"
    )
    assert done.code == 0, done
    assert done.out.startswith("✔ answered by alice — input turn2-1"), done.out
    assert fake.submits[0].text == "Line one.\nLine two."
    again = await chorus(
        address, "runs", "input", RUN_ID, "--input-id", "turn2-1", "--text", "APPROVE"
    )
    assert again.code == 7, again  # first answer wins
    assert "FAILED_PRECONDITION" in again.err and "not pending" in again.err, again.err


async def test_runs_input_repeated_request_id_returns_the_first_result(approval) -> None:
    _fake, address = approval
    args = ("runs", "input", RUN_ID, "--input-id", "turn1-1", "--approve", "--request-id", "k1")
    first = await chorus(address, *args)
    second = await chorus(address, *args)
    assert first.code == second.code == 0, (first, second)
    assert first.out == second.out and "(seq 6)" in first.out
    other = await chorus(address, "runs", "input", RUN_ID, "--input-id", "turn1-1", "--deny")
    assert other.code == 7, other


async def test_runs_input_of_a_run_that_does_not_wait_exits_7(approval) -> None:
    fake, address = approval
    fake.status = run_pb2.RUN_STATUS_COMPLETED
    done = await chorus(address, "runs", "input", RUN_ID, "--approve")
    assert done.code == 7, done
    assert f"run {RUN_ID} is not waiting for input (status completed)" in done.err
    assert not fake.submits


async def test_runs_input_errors_and_exit_codes(approval) -> None:
    fake, address = approval
    missing = await chorus(address, "runs", "input", str(uuid.uuid4()), "--approve")
    assert missing.code == 4 and "NOT_FOUND" in missing.err, missing
    stale = await chorus(address, "runs", "input", RUN_ID, "--input-id", "turn9-9", "--approve")
    assert stale.code == 7 and "not pending" in stale.err, stale
    wrong_kind = await chorus(address, "runs", "input", RUN_ID, "--text", "hello")
    assert wrong_kind.code == 2, wrong_kind
    assert "waits for an approval (input turn1-1): use --approve or --deny" in wrong_kind.err
    explicit_wrong_kind = await chorus(
        address, "runs", "input", RUN_ID, "--input-id", "turn1-1", "--text", "hello"
    )
    assert explicit_wrong_kind.code == 4, explicit_wrong_kind
    assert "INVALID_ARGUMENT" in explicit_wrong_kind.err
    assert "decision: required for this request" in explicit_wrong_kind.err
    for bad in (
        [],
        ["--approve", "--deny"],
        ["--approve", "--text", "x"],
        ["--text", ""],
        ["--text", "x", "--reason", "r"],
    ):
        done = await chorus(address, "runs", "input", RUN_ID, *bad)
        assert done.code == 2, (bad, done)
        assert "Usage: chorus runs input" in done.err, done.err
    empty_stdin = await chorus(address, "runs", "input", RUN_ID, "--text", "-", stdin=b"\n")
    assert empty_stdin.code == 2 and "the answer is empty" in empty_stdin.err
    assert [s.input_id for s in fake.submits] == ["turn9-9", "turn1-1"]  # both refused
    assert fake.status == run_pb2.RUN_STATUS_AWAITING_INPUT


# ----------------------------------------------------------------- runs list / show, rendering
async def test_runs_list_and_show_name_the_waiting_run(approval) -> None:
    _fake, address = approval
    tsv = await chorus(address, "runs", "list")
    assert tsv.code == 0, tsv
    row = tsv.out.splitlines()[1].split("\t")
    assert row[:3] == [RUN_ID, "awaiting_input", "assistant-approval"], row
    table = await chorus(address, "runs", "list", "--output", "table")
    assert "awaiting input" in table.out, table.out
    as_json = await chorus(address, "runs", "list", "--output", "json")
    listed = json.loads(as_json.out)["runs"][0]
    assert listed["status"] == "RUN_STATUS_AWAITING_INPUT"
    assert listed["pendingInput"]["inputId"] == "turn1-1"
    for spelled in ("awaiting_input", "awaiting-input", "AWAITING_INPUT"):
        filtered = await chorus(address, "runs", "list", "--status", spelled)
        assert filtered.code == 0, (spelled, filtered)
    shown = await chorus(address, "runs", "show", RUN_ID)
    assert shown.code == 0, shown
    assert json.loads(shown.out)["pendingInput"]["toolCall"]["name"] == "calculator"
    assert f"chorus runs input {RUN_ID} --input-id turn1-1 --approve" in shown.err


def test_the_new_events_are_rendered() -> None:
    console = Console(record=True, width=200, force_terminal=False)
    events, _request = approval_script()
    events += [
        E(
            input_received=E.InputReceived(
                input_id="turn1-1", by="alice", decision={"approved": True}
            )
        ),
        E(
            input_received=E.InputReceived(
                input_id="turn1-2", by="alice", decision={"approved": False, "reason": "no"}
            )
        ),
        E(
            input_received=E.InputReceived(
                input_id="turn1-3", expired=True, decision={"approved": False, "reason": "EXPIRED"}
            )
        ),
        E(agent="editor", input_requested=text_script()[1]),
        E(input_received=E.InputReceived(input_id="turn2-1", by="bob", text="fine")),
        E(input_received=E.InputReceived(input_id="turn2-2", expired=True)),
    ]
    for seq, event in enumerate(events, start=1):
        event.run_id, event.seq = RUN_ID, seq
    with RunRenderer(console) as renderer:
        for event in events:
            renderer.handle(event)
    lines = [line.strip() for line in console.export_text().splitlines()]
    expected = [
        '⚙ assistant calls calculator({"expression": "0.175 * 2340"})',
        '⏸ waiting for approval of calculator({"expression": "0.175 * 2340"}) — input turn1-1',
        "✔ approved by alice",
        "✖ denied by alice: no",
        "✖ input turn1-3 expired: the tool call is denied",
        "⏸ waiting for editor's answer — input turn2-1",
        "✔ answered by bob",
        "✖ input turn2-2 expired without an answer",
    ]
    found = [line for line in lines if line in expected]
    assert found == expected, lines
    assert "assistant ▸ Let me compute that." in lines
