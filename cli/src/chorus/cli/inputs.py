"""Answering a run's requests for input from the terminal (issue 21 item 4).

A run that needs a person emits `input_requested` (`RunEvent.InputRequested`: an approval of
one tool call, or a text answer for a `human` agent's turn) and waits, status
RUN_STATUS_AWAITING_INPUT, until RunService.SubmitRunInput answers it. `chorus run` /
`chorus watch` on a terminal ask the question where the run is shown:

* APPROVAL — the agent, the tool and its arguments, then `Approve? [y/N]`; on a denial a
  reason (optional; the agent receives it).
* TEXT — the prompt (the human agent's instructions), then lines up to an empty line (or
  Ctrl-D): the answer, which becomes the human agent's message.

The answer goes to SubmitRunInput with a fresh `request_id` (repeated on a retry, so it is
recorded once: AIP-155) and the stream goes on. The prompt runs next to the stream: when
the request is answered elsewhere first (the web page, another terminal), expires, or the
run ends, the prompt is withdrawn and the stream shows who answered. A request seen in a
replay (`chorus watch` of a run that went on since) is not asked: `InputPrompter` asks only
when GetRun says the run still waits for that `input_id`.

Without a terminal on stdin (or with `--no-input`) nothing is asked: the command prints
how to answer (`chorus runs input RUN_ID …`) and exits with `EXIT_AWAITING_INPUT` (6)
while the run waits — no orchestrator holds a waiting run, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc
from rich.console import Console
from rich.text import Text

from chorus.v1 import chat_pb2, run_pb2, run_service_pb2, run_service_pb2_grpc

EXIT_AWAITING_INPUT = 6
"""`chorus run` / `chorus watch` stopped (stdin not a terminal, `--no-input`, or Ctrl-D at
the prompt) while the run waits for input; answer with `chorus runs input`."""

TEXT_END_HINT = "end it with an empty line or Ctrl-D"
"""How a multi-line text answer ends at the terminal."""

InputRequested = run_pb2.RunEvent.InputRequested
LineReader = Callable[[str], Awaitable[str | None]]
"""Shows a prompt and returns the next line typed (without its newline), None at EOF."""


class AwaitingInput(Exception):
    """The run waits for `request` and this command does not (or cannot) ask."""

    def __init__(self, run_id: str, request: InputRequested) -> None:
        super().__init__(f"run {run_id} waits for input {request.input_id}")
        self.run_id = run_id
        self.request = request


class NotAnswered(Exception):
    """The person ended the prompt without an answer (Ctrl-D)."""


class SubmitFailed(Exception):
    """SubmitRunInput failed for good (not INPUT_NOT_PENDING, not a bad answer)."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(str(error))
        self.error = error


def call_text(call: chat_pb2.ToolCall) -> str:
    """`name(arguments)` of a tool call, arguments as sent (JSON), compacted."""
    name, arguments = call.name, call.arguments
    with contextlib.suppress(ValueError, TypeError):
        arguments = json.dumps(json.loads(arguments), ensure_ascii=False, separators=(", ", ": "))
    return f"{name}({arguments})"


def _arguments(arguments: str) -> list[tuple[str, str]]:
    """A tool call's JSON arguments as (name, value) lines for a person to read: strings
    as they are (code keeps its lines), other values as JSON; non-object JSON as one line."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return [("arguments", arguments)]
    if not isinstance(parsed, dict):
        return [("arguments", json.dumps(parsed, ensure_ascii=False))]
    return [
        (str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
        for k, v in parsed.items()
    ]


def is_approval(request: InputRequested) -> bool:
    return request.kind == run_pb2.INPUT_KIND_APPROVAL


def answer_commands(run_id: str, request: InputRequested) -> list[str]:
    """The `chorus runs input` commands that answer `request` (shell-quoted)."""
    base = f"chorus runs input {shlex.quote(run_id)} --input-id {shlex.quote(request.input_id)}"
    if is_approval(request):
        return [f"{base} --approve", f"{base} --deny --reason 'why not'"]
    return [f"{base} --text 'your answer'", f"{base} --text - < answer.txt"]


def print_how_to_answer(console: Console, run_id: str, request: InputRequested) -> None:
    """What the run waits for and the commands that answer it."""
    if is_approval(request):
        what = f"approval of {call_text(request.tool_call)} by {request.agent or 'an agent'}"
    else:
        what = f"a text answer for {request.agent or 'a human agent'}"
    lines = [f"run {run_id} waits for {what} (input {request.input_id})."]
    if request.HasField("expire_time"):
        expires = request.expire_time.ToDatetime().isoformat(timespec="seconds")
        lines.append(f"It expires at {expires}Z. Answer with:")
    else:
        lines.append("Answer with:")
    lines += [f"  {command}" for command in answer_commands(run_id, request)]
    lines.append(f"or follow it and answer at the prompt: chorus watch {shlex.quote(run_id)}")
    for line in lines:
        console.print(line, markup=False, highlight=False)


class TerminalLines:
    """Lines typed on a terminal's stdin, read without blocking the event loop (the run
    stream goes on meanwhile): `loop.add_reader` on fd 0. Keeps what was typed ahead."""

    def __init__(self, console: Console, fd: int | None = None) -> None:
        self.console = console
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.buffer = bytearray()
        self.eof = False

    async def __call__(self, prompt: str) -> str | None:
        self.console.print(Text(prompt, style="bold"), end="")
        self.console.file.flush()
        while b"\n" not in self.buffer and not self.eof:
            await self._more()
        if b"\n" in self.buffer:
            line, _, rest = bytes(self.buffer).partition(b"\n")
            self.buffer = bytearray(rest)
            return line.decode(errors="replace").rstrip("\r")
        if self.buffer:  # EOF after a partial line
            line, self.buffer = bytes(self.buffer), bytearray()
            return line.decode(errors="replace")
        return None

    async def _more(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.fd, readable)
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)
        data = os.read(self.fd, 4096)
        if data:
            self.buffer.extend(data)
        else:
            self.eof = True


Answer = str | run_pb2.ApprovalDecision


async def ask(request: InputRequested, read_line: LineReader, console: Console) -> Answer:
    """Ask a person for the answer to `request` at the terminal: an ApprovalDecision
    (`Approve? [y/N]`, then an optional reason on a denial) or the text (lines up to an
    empty one; never empty).

    Raises:
        NotAnswered: EOF (Ctrl-D) before an answer.
    """
    agent = request.agent or "an agent"
    if is_approval(request):
        console.print(
            Text.assemble(
                ("⏸ ", "bold yellow"),
                (agent, "bold cyan"),
                " wants to call ",
                (request.tool_call.name, "bold yellow"),
                ":" if _arguments(request.tool_call.arguments) else "",
            )
        )
        for name, value in _arguments(request.tool_call.arguments):
            if "\n" in value:
                console.print(Text(f"  {name}:", style="yellow"))
                for code_line in value.splitlines():
                    console.print(Text(f"    {code_line}"))
            else:
                console.print(Text.assemble((f"  {name}: ", "yellow"), value))
        if request.prompt and not request.prompt.startswith(f"{agent} wants to call "):
            console.print(Text(f"  {request.prompt}", style="dim"))  # more than the above
        while True:
            line = await read_line("Approve? [y/N] ")
            if line is None:
                raise NotAnswered
            choice = line.strip().lower()
            if choice in ("y", "yes"):
                return run_pb2.ApprovalDecision(approved=True)
            if choice in ("", "n", "no"):
                reason = await read_line("Reason (optional, Enter for none): ")
                return run_pb2.ApprovalDecision(approved=False, reason=(reason or "").strip())
            console.print("answer y (approve) or n (deny)", markup=False)
    console.print(Text.assemble(("⏸ ", "bold yellow"), (agent, "bold cyan"), " asks you:"))
    if request.prompt:
        console.print(Text(request.prompt))
    console.print(Text(f"(your answer; {TEXT_END_HINT})", style="dim"))
    lines: list[str] = []
    while True:
        line = await read_line("> ")
        if line is None or (not line.strip() and lines):
            break
        if not line.strip():
            console.print("an answer cannot be empty", markup=False)
            continue
        lines.append(line)
    if not lines:
        raise NotAnswered
    return "\n".join(lines)


class Pausable(Protocol):
    """The renderer's live area, which the prompt pauses (`RunRenderer.paused`)."""

    def paused(self) -> contextlib.AbstractContextManager[None]: ...


class InputPrompter:
    """Follows a run's requests for input while its stream is rendered.

    `before(event)` / `after(event)` are called around the rendering of every event. For an
    `input_requested` that GetRun confirms is still pending, `after` either raises
    `AwaitingInput` (not interactive) or starts `task`, which asks at the terminal and
    submits the answer (`SubmitFailed` when that fails for good); the reader of the stream
    waits on `task` too (`next_item`). An `input_received` for that request, or the run's
    end, withdraws the prompt (`before`).
    """

    def __init__(
        self,
        stub: run_service_pb2_grpc.RunServiceStub,
        metadata: tuple[tuple[str, str], ...],
        console: Console,
        renderer: Pausable,
        *,
        interactive: bool,
        read_line: LineReader | None = None,
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.console = console
        """Where questions are asked (stderr when stdout is not a terminal)."""
        self.renderer = renderer
        self.interactive = interactive
        self.read_line: LineReader | None = read_line
        """Reads the answers; stdin's `TerminalLines` (one for the command: what is typed
        ahead of a question is kept for it) unless given."""
        self.task: asyncio.Task[None] | None = None
        self.asking: str = ""
        """The input_id asked at the prompt, while `task` runs."""
        self.submitting = False
        """True while the answer typed is being sent (the prompt is then not withdrawn)."""

    async def before(self, event: run_pb2.RunEvent) -> None:
        """Called before `event` is rendered: an answer to the request being asked, or the
        run's end, withdraws the prompt (so the answer shows on a line of its own)."""
        kind = event.WhichOneof("payload")
        if kind == "input_received" and event.input_received.input_id == self.asking:
            await self.withdraw(f"input {self.asking} was answered elsewhere (or expired)")
        elif kind in ("run_completed", "run_failed", "run_cancelled"):
            await self.withdraw("the run ended")

    async def after(self, event: run_pb2.RunEvent) -> None:
        """Called after `event` is rendered: a pending `input_requested` is asked (`task`),
        or raises AwaitingInput when this command does not ask."""
        if event.WhichOneof("payload") != "input_requested":
            return
        request = event.input_requested
        if not await self._pending(event.run_id, request, event.seq):
            return
        if not self.interactive:
            raise AwaitingInput(event.run_id, request)
        await self.withdraw()
        self.asking = request.input_id
        self.task = asyncio.ensure_future(self._ask_and_submit(event.run_id, request))

    async def withdraw(self, why: str = "") -> None:
        """Stop asking (the request was answered elsewhere, expired, or the run ended),
        saying `why` when a question was on the screen. An answer being submitted is left
        to finish (its own `input_received` may arrive before SubmitRunInput's reply)."""
        task = self.task
        if self.submitting or task is None:
            return
        self.task = None
        self.asking = ""
        if task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if why:
            self.console.print()
            self.console.print(Text(f"({why}; not asking any more)", style="dim"))

    async def _pending(self, run_id: str, request: InputRequested, seq: int) -> bool:
        """Whether the run still waits for `request` (a replayed one may be long answered).
        A run not (yet) recorded as waiting but with no later event stored counts as
        waiting: an answer arriving on the stream withdraws the prompt anyway."""
        try:
            reply = await self.stub.GetRun(
                run_service_pb2.GetRunRequest(run_id=run_id), metadata=self.metadata, timeout=30
            )
        except grpc.aio.AioRpcError:
            return True  # not known: ask (an answer from elsewhere withdraws the question)
        run = reply.run
        if run.status == run_pb2.RUN_STATUS_AWAITING_INPUT:
            return bool(run.pending_input.input_id == request.input_id)
        if run.status in (run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING):
            return bool(run.last_seq <= seq)
        return False

    async def _ask_and_submit(self, run_id: str, request: InputRequested) -> None:
        if self.read_line is None:
            self.read_line = TerminalLines(self.console)
        read_line = self.read_line
        while True:
            with self.renderer.paused():
                try:
                    answer = await ask(request, read_line, self.console)
                except NotAnswered:
                    self.console.print()
                    raise AwaitingInput(run_id, request) from None
            self.submitting = True
            try:
                await submit(self.stub, self.metadata, run_id, request.input_id, answer)
                return
            except grpc.aio.AioRpcError as err:
                if is_not_pending(err):
                    self.console.print(
                        Text(
                            f"(input {request.input_id} is no longer pending: answered "
                            "elsewhere first, or expired)",
                            style="dim",
                        )
                    )
                    return
                if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise SubmitFailed(err) from None
                self.console.print(
                    Text(f"not accepted: {err.details()}; try again", style="red"),
                )
            finally:
                self.submitting = False


def is_not_pending(err: grpc.aio.AioRpcError) -> bool:
    """Whether `err` is SubmitRunInput's FAILED_PRECONDITION with reason INPUT_NOT_PENDING."""
    if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return False
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason == "INPUT_NOT_PENDING":
                return True
    return "INPUT_NOT_PENDING" in (err.details() or "")


SUBMIT_ATTEMPTS = 4
"""Tries of SubmitRunInput when the service is briefly unavailable (same request_id)."""


async def submit(
    stub: run_service_pb2_grpc.RunServiceStub,
    metadata: tuple[tuple[str, str], ...],
    run_id: str,
    input_id: str,
    answer: Answer,
    request_id: str = "",
) -> run_service_pb2.SubmitRunInputResponse:
    """RunService.SubmitRunInput with `answer` (text or decision). A fresh `request_id`
    unless given; an UNAVAILABLE reply is retried with the same one (recorded once).

    Raises:
        grpc.aio.AioRpcError: NOT_FOUND, FAILED_PRECONDITION (INPUT_NOT_PENDING),
            INVALID_ARGUMENT, or UNAVAILABLE after `SUBMIT_ATTEMPTS` tries.
    """
    request = run_service_pb2.SubmitRunInputRequest(
        run_id=run_id, input_id=input_id, request_id=request_id or str(uuid.uuid4())
    )
    if isinstance(answer, str):
        request.text = answer
    else:
        request.decision.CopyFrom(answer)
    for attempt in range(1, SUBMIT_ATTEMPTS + 1):
        try:
            reply: run_service_pb2.SubmitRunInputResponse = await stub.SubmitRunInput(
                request, metadata=metadata, timeout=30
            )
            return reply
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == SUBMIT_ATTEMPTS:
                raise
            await asyncio.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def received_text(received: run_pb2.RunEvent.InputReceived) -> tuple[str, str]:
    """A line for an `input_received` and its style: `✔ approved by alice`, `✖ denied by
    alice: reason`, `✔ answered by alice`, `✖ input turn1-1 expired …`."""
    if received.expired:
        if received.WhichOneof("answer") == "decision":
            return f"✖ input {received.input_id} expired: the tool call is denied", "red"
        return f"✖ input {received.input_id} expired without an answer", "red"
    who = received.by or "?"
    if received.WhichOneof("answer") == "decision":
        decision = received.decision
        if decision.approved:
            suffix = f": {decision.reason}" if decision.reason else ""
            return f"✔ approved by {who}{suffix}", "green"
        return f"✖ denied by {who}: {decision.reason or 'no reason given'}", "red"
    return f"✔ answered by {who}", "green"


def requested_text(agent: str, request: InputRequested) -> str:
    """A line for an `input_requested`: `⏸ waiting for approval of calculator({...}) —
    input turn1-1` or `⏸ waiting for editor's answer — input turn2-1`."""
    if is_approval(request):
        return (
            f"⏸ waiting for approval of {call_text(request.tool_call)} — input {request.input_id}"
        )
    who = request.agent or agent or "a person"
    return f"⏸ waiting for {who}'s answer — input {request.input_id}"


class RunStream(Protocol):
    """A StreamRun or WatchRun call (`grpc.aio.UnaryStreamCall`)."""

    def read(self) -> Awaitable[object]:
        """The next `StreamRunResponse` / `WatchRunResponse`, `grpc.aio.EOF` at the end."""


async def next_event(call: RunStream, prompter: InputPrompter | None) -> run_pb2.RunEvent | None:
    """The next event of a run stream (`call.read()`; None once the stream ended), while the
    prompt (`prompter.task`) runs next to it: its failure (AwaitingInput on Ctrl-D,
    SubmitFailed) is raised here."""
    item = await _next_item(call, prompter)
    if isinstance(item, run_service_pb2.StreamRunResponse | run_service_pb2.WatchRunResponse):
        return item.event
    return None  # grpc.aio.EOF


async def _next_item(call: RunStream, prompter: InputPrompter | None) -> object:
    if prompter is None or prompter.task is None:
        return await call.read()
    read = asyncio.ensure_future(call.read())
    try:
        while prompter.task is not None:
            task = prompter.task
            done, _ = await asyncio.wait({read, task}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                if prompter.task is task:
                    prompter.task = None
                    prompter.asking = ""
                if not task.cancelled():
                    task.result()  # raises what the prompt raised
            if read in done:
                return read.result()
        return await read
    except BaseException:
        read.cancel()
        raise
