"""`chorus`: run, watch and inspect Chorus runs from the terminal, over gRPC.

Exit codes: 0 success (run completed), 1 run failed, 2 usage error, 3 run cancelled,
4 the service answered with an error or could not be reached, 5 detached from a live run,
6 the run waits for input that this command did not ask for (`run` / `watch` with stdin not
a terminal, `--no-input`, or Ctrl-D at the prompt: answer with `chorus runs input`),
7 the input answered is not pending (`chorus runs input`: already answered — first answer
wins —, expired, or the run does not wait for input).

Human in the loop (issue 21, `chorus.cli.inputs`): `run` and `watch` on a terminal ask the
questions a run asks (`input_requested`: approve a tool call, or a human agent's text) and
send the answer with RunService.SubmitRunInput; `chorus runs input RUN_ID` answers from a
script or another terminal.

`chorus run` and `chorus watch` survive the loss of the orchestrator replica serving them:
when the stream fails UNAVAILABLE (or is cancelled / reset by the server) they follow the
run again — `WatchRun` after the last seq printed, on any replica — with jittered backoff
(tenacity) for up to `--reattach-s` (`CHORUS_WATCH_REATTACH_S`, 60 s) without news, so the
output goes on without a gap or a repeat. A first call that fails before any event fails
at once, as before (nothing was followed yet: the stack is probably down).
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import grpc
import typer
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.prompt import Prompt
from rich.table import Table
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from chorus.cli import inputs
from chorus.cli.client import Connection, reattachable
from chorus.cli.client import channel as open_channel
from chorus.cli.inputs import EXIT_AWAITING_INPUT, InputPrompter
from chorus.cli.render import RunRenderer
from chorus.core.run_export import build_run_export, list_run_events
from chorus.v1 import (
    chat_pb2,
    history_service_pb2,
    provider_service_pb2,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

EXIT_FAILED, EXIT_CANCELLED, EXIT_RPC_ERROR, EXIT_DETACHED = 1, 3, 4, 5
EXIT_INPUT_NOT_PENDING = 7

app = typer.Typer(help="Run and watch Chorus agent teams.", no_args_is_help=True)
runs_app = typer.Typer(help="List, show, answer, cancel and export runs.", no_args_is_help=True)
conversations_app = typer.Typer(help="List and show conversations.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(conversations_app, name="conversations")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
"""Errors and hints: never wrapped by the CLI (a field violation stays one line)."""
T = TypeVar("T")

_defaults = Connection.from_env()
_conn = Connection(**vars(_defaults))

REATTACH_S = 60.0
"""Default of `--reattach-s`: how long a lost run stream is followed again, seconds."""
REATTACH_FIRST_WAIT_S = 0.05
"""Scale of the full-jitter exponential backoff between attempts (tenacity)."""
REATTACH_MAX_WAIT_S = 2.0
"""Longest wait between two attempts."""
_options: dict[str, float] = {"reattach_s": REATTACH_S}


class OnInterrupt(enum.StrEnum):
    """What Ctrl-C does to a run being streamed."""

    ask = "ask"
    cancel = "cancel"
    detach = "detach"


class Output(enum.StrEnum):
    """How a list is printed: `table` on a terminal, else `tsv` (values whole, one row a
    line, tab-separated, a header first); `json` is the RPC's response as proto3 JSON."""

    auto = "auto"
    table = "table"
    tsv = "tsv"
    json = "json"


NoInputOption = Annotated[
    bool,
    typer.Option(
        "--no-input",
        help="Never ask at the terminal: when the run waits for input, print how to answer "
        "(chorus runs input) and exit 6.",
    ),
]
"""The `--no-input` option of `run` and `watch`."""

OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        "-O",
        help="table (on a terminal), tsv (values whole; the default when piped) or json.",
    ),
]
"""The `--output/-O` option of the list commands."""


def _print_rpc_error(err: grpc.aio.AioRpcError) -> None:
    """The error as one line (code, message), its field violations, and — when the stack
    cannot be reached — that it is not running and how to start it."""
    details = err.details() or ""
    unreachable = err.code() == grpc.StatusCode.UNAVAILABLE and any(
        hint in details
        for hint in ("Connection refused", "failed to connect", "Failed to connect", "DNS")
    )
    if unreachable:
        found = _conn.service_of(details)
        name, address = found if found else ("the stack", details)
        err_console.print(
            f"[red]error:[/red] cannot reach {name} at {address} (connection refused): "
            "the Chorus stack is not running there.",
            highlight=False,
        )
        err_console.print(
            "Start it with `make run` in the repository (it prints the addresses), or point "
            "the CLI at a running one: --orchestrator / --history / --provider, "
            "CHORUS_ORCHESTRATOR_PORT (and the other CHORUS_*_PORT) or CHORUS_*_ADDRESS.",
            highlight=False,
        )
        return
    err_console.print(f"[red]error:[/red] {err.code().name}: {details}", highlight=False)
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                err_console.print(f"  {v.field}: {v.description}", markup=False, highlight=False)


@app.callback()
def connect(
    orchestrator: Annotated[
        str, typer.Option(envvar="CHORUS_ORCHESTRATOR_ADDRESS", help="RunService host:port.")
    ] = _defaults.orchestrator,
    history: Annotated[
        str, typer.Option(envvar="CHORUS_HISTORY_ADDRESS", help="HistoryService host:port.")
    ] = _defaults.history,
    provider: Annotated[
        str, typer.Option(envvar="CHORUS_PROVIDER_ADDRESS", help="ProviderService host:port.")
    ] = _defaults.provider,
    user: Annotated[
        str, typer.Option(envvar="CHORUS_USER", help="Identity sent as x-chorus-user.")
    ] = _defaults.user,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CHORUS_INTERNAL_TOKEN", help="Internal token of the stack.", show_default=False
        ),
    ] = _defaults.token,
    reattach_s: Annotated[
        float,
        typer.Option(
            envvar="CHORUS_WATCH_REATTACH_S",
            min=0,
            help="Seconds `run` / `watch` keep trying to follow the run on another "
            "orchestrator replica when theirs goes away (0: never).",
        ),
    ] = REATTACH_S,
) -> None:
    """Connection and identity, from flags or the environment."""
    _conn.orchestrator, _conn.history, _conn.provider = orchestrator, history, provider
    _conn.user, _conn.token = user, token
    _options["reattach_s"] = reattach_s


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(coro_fn())
    except grpc.aio.AioRpcError as err:
        _print_rpc_error(err)
        raise typer.Exit(EXIT_RPC_ERROR) from None
    except ValueError as err:  # a malformed address list
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


def _json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


def _status_name(status: int) -> str:
    """`running`, `awaiting_input`, … (what `runs list --status` takes)."""
    return run_pb2.RunStatus.Name(status).removeprefix("RUN_STATUS_").lower()


def _status_label(status: int) -> str:
    """A status for people: `running`, `awaiting input`, …"""
    return _status_name(status).replace("_", " ")


OpenStream = Callable[[run_service_pb2_grpc.RunServiceStub], inputs.RunStream]
"""Opens the first call of a run stream (StreamRun or WatchRun) on a stub."""


async def _follow(
    stub: run_service_pb2_grpc.RunServiceStub,
    open_first: OpenStream,
    renderer: RunRenderer,
    reattach_s: float,
    prompter: InputPrompter | None = None,
) -> None:
    """Render the run's events until its stream ends; when the stream fails in a way
    another replica can take over (`reattachable`), follow the run again after the last
    seq rendered (WatchRun), with jittered backoff for up to `reattach_s` seconds without
    news. With `prompter`, a pending request for input is asked next to the stream.

    Raises:
        grpc.aio.AioRpcError: a final error, or the last one when the time ran out.
        inputs.AwaitingInput: the run waits for input this command does not ask for.
        inputs.SubmitFailed: the answer typed could not be sent.
    """

    def retryable(error: BaseException) -> bool:
        return (
            reattach_s > 0
            and renderer.rendered > 0  # the stream was up: its replica went away
            and not renderer.outcome
            and reattachable(error)
        )

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "?"
        renderer.note(
            f"… lost the orchestrator ({code}); following the run again after seq "
            f"{renderer.last_seq} (attempt {state.attempt_number + 1})"
        )

    def open_call() -> inputs.RunStream:
        if renderer.rendered:  # follow the run after what was rendered, on any replica
            return stub.WatchRun(
                run_service_pb2.WatchRunRequest(
                    run_id=renderer.run_id, after_seq=renderer.last_seq
                ),
                metadata=_conn.metadata,
            )
        return open_first(stub)

    while True:
        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=wait_random_exponential(multiplier=REATTACH_FIRST_WAIT_S, max=REATTACH_MAX_WAIT_S),
            stop=stop_after_delay(reattach_s),
            before_sleep=waiting,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                call = open_call()
                # the first news (or the error) of this call
                event = await inputs.next_event(call, prompter)
        try:
            while event is not None:
                if prompter is not None:
                    await prompter.before(event)
                renderer.handle(event)
                if prompter is not None:
                    await prompter.after(event)
                event = await inputs.next_event(call, prompter)
            return
        except grpc.aio.AioRpcError as err:
            if not retryable(err):
                raise
            renderer.note(
                f"… lost the orchestrator ({err.code().name}); following the run again "
                f"after seq {renderer.last_seq}"
            )


def _parse_models(models: list[str]) -> dict[str, chat_pb2.ModelRef]:
    out = {}
    for item in models:
        agent, sep, ref = item.partition("=")
        provider, slash, model = ref.partition("/")
        if not sep or not slash or not agent:
            raise typer.BadParameter(f"--model expects AGENT=PROVIDER/MODEL, got {item!r}")
        out[agent] = chat_pb2.ModelRef(provider=provider, model=model)
    return out


def _stream_run(
    open_first: OpenStream,
    on_interrupt: OnInterrupt,
    *,
    run_id: str = "",
    after_seq: int = 0,
    no_input: bool = False,
) -> int:
    """Render a run stream (reattaching to another replica when its own goes away); ask
    the run's requests for input on a terminal (not with `no_input`: then stop at one,
    exit code 6); handle Ctrl-C by cancelling or detaching. Returns the exit code."""
    renderer = RunRenderer(console)
    renderer.last_seq = after_seq
    renderer.run_id = run_id
    interactive = not no_input and sys.stdin.isatty()

    async def main() -> None:
        async with open_channel(_conn.orchestrator) as channel:
            stub = _conn.runs(channel)
            prompter = InputPrompter(
                stub,
                _conn.metadata,
                console if console.is_terminal else err_console,  # never into a pipe
                renderer,
                interactive=interactive,
            )
            with renderer:
                try:
                    await _follow(stub, open_first, renderer, _options["reattach_s"], prompter)
                finally:
                    await prompter.withdraw()

    try:
        asyncio.run(main())
    except ValueError as err:  # a malformed address list
        err_console.print(f"[red]error:[/red] {err}")
        return 2
    except inputs.AwaitingInput as waiting:
        inputs.print_how_to_answer(console, waiting.run_id, waiting.request)
        return EXIT_AWAITING_INPUT
    except inputs.SubmitFailed as failed:
        _print_rpc_error(failed.error)
        err_console.print(
            f"the answer was not sent; answer with `chorus runs input {renderer.run_id}` "
            f"or follow it again with: chorus watch {renderer.run_id} --after {renderer.last_seq}"
        )
        return EXIT_RPC_ERROR
    except grpc.aio.AioRpcError as err:
        _print_rpc_error(err)
        if renderer.run_id and not renderer.outcome:
            err_console.print(
                f"follow it again with: chorus watch {renderer.run_id} --after {renderer.last_seq}"
            )
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        if not renderer.run_id:
            return EXIT_DETACHED
        choice = on_interrupt.value
        if choice == "ask":
            choice = (
                Prompt.ask(
                    "\nCancel the run or detach from it?",
                    choices=["cancel", "detach"],
                    default="detach",
                )
                if sys.stdin.isatty()
                else "detach"
            )
        if choice == "cancel":
            reply = _run(lambda: _cancel(renderer.run_id, "cancelled from the chorus CLI"))
            console.print(reply.message or "cancel requested")
            return EXIT_CANCELLED
        console.print(
            f"detached; follow again with: chorus watch {renderer.run_id} --after {renderer.last_seq}"
        )
        return EXIT_DETACHED
    return {"run_completed": 0, "run_failed": EXIT_FAILED, "run_cancelled": EXIT_CANCELLED}.get(
        renderer.outcome or "", EXIT_RPC_ERROR
    )


async def _cancel(run_id: str, reason: str) -> run_service_pb2.CancelRunResponse:
    async with open_channel(_conn.orchestrator) as channel:
        return await _conn.runs(channel).CancelRun(
            run_service_pb2.CancelRunRequest(run_id=run_id, reason=reason), metadata=_conn.metadata
        )


@app.command()
def run(
    template: Annotated[
        str,
        typer.Argument(help="Team template: duet, assistant, crypto-analysts, article-pipeline, …"),
    ],
    text: Annotated[
        str | None,
        typer.Argument(
            metavar="[INPUT]", help="Topic, task or message (or --input).", show_default=False
        ),
    ] = None,
    input: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Topic, task or message.", show_default=False),
    ] = None,
    conversation: Annotated[str, typer.Option(help="Conversation id (default: a new one).")] = "",
    max_turns: Annotated[
        int | None, typer.Option(min=1, help="Turn limit (default: the team's).")
    ] = None,
    model: Annotated[
        list[str],
        typer.Option(help="Override an agent's model: AGENT=PROVIDER/MODEL (repeatable)."),
    ] = [],  # noqa: B006
    request_id: Annotated[str, typer.Option(help="Idempotency key.")] = "",
    on_interrupt: Annotated[
        OnInterrupt, typer.Option(help="On Ctrl-C: ask (on a terminal), cancel or detach.")
    ] = OnInterrupt.ask,
    no_input: NoInputOption = False,
) -> None:
    """Start a run of TEMPLATE and stream it live until it ends. When the run asks for
    input (a tool call to approve, a human agent's turn), asks at the terminal and sends
    the answer; with stdin not a terminal or --no-input, prints how to answer and exits 6
    while the run waits."""
    if (text is None) == (input is None):
        raise typer.BadParameter(
            "give the run's input once: chorus run TEMPLATE INPUT, or --input INPUT",
            param_hint="--input",
        )
    spec = run_pb2.RunSpec(
        template=template,
        input=input if input is not None else text,
        conversation_id=conversation,
        max_turns=max_turns,
        request_id=request_id,
        model_overrides=_parse_models(model),
    )
    code = _stream_run(
        lambda stub: stub.StreamRun(
            run_service_pb2.StreamRunRequest(spec=spec), metadata=_conn.metadata
        ),
        on_interrupt,
        no_input=no_input,
    )
    raise typer.Exit(code)


@app.command()
def watch(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    after: Annotated[int, typer.Option("--after", help="Replay events after this seq.")] = 0,
    on_interrupt: Annotated[
        OnInterrupt, typer.Option(help="On Ctrl-C: ask (on a terminal), cancel or detach.")
    ] = OnInterrupt.detach,
    no_input: NoInputOption = False,
) -> None:
    """Follow a run (live or finished) from the event after --after. A request for input
    the run still waits for is asked at the terminal (with stdin not a terminal or
    --no-input: how to answer is printed, exit 6)."""
    code = _stream_run(
        lambda stub: stub.WatchRun(
            run_service_pb2.WatchRunRequest(run_id=run_id, after_seq=after), metadata=_conn.metadata
        ),
        on_interrupt,
        run_id=run_id,
        after_seq=after,
        no_input=no_input,
    )
    raise typer.Exit(code)


@runs_app.command("list")
def runs_list(
    conversation: Annotated[str, typer.Option(help="Only runs of this conversation.")] = "",
    status: Annotated[
        str,
        typer.Option(
            help="Only runs with this status: queued, running, awaiting_input, completed, "
            "failed, cancelled."
        ),
    ] = "",
    limit: Annotated[int, typer.Option(min=1, help="Page size.")] = 20,
    output: OutputOption = Output.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --output json.")] = False,
) -> None:
    """List your runs, newest first."""
    status_value = run_pb2.RUN_STATUS_UNSPECIFIED
    if status:
        try:
            name = status.strip().upper().replace("-", "_").replace(" ", "_")
            # The generated .pyi types Value() as int; the number is a RunStatus.
            status_value = cast(run_pb2.RunStatus, run_pb2.RunStatus.Value(f"RUN_STATUS_{name}"))
        except ValueError:
            raise typer.BadParameter(f"unknown status {status!r}") from None

    async def call() -> run_service_pb2.ListRunsResponse:
        async with open_channel(_conn.orchestrator) as channel:
            return await _conn.runs(channel).ListRuns(
                run_service_pb2.ListRunsRequest(
                    page_size=limit, conversation_id=conversation, status=status_value
                ),
                metadata=_conn.metadata,
            )

    reply = _run(call)
    table = output == Output.table or (
        output == Output.auto and not as_json and console.is_terminal
    )
    rows = [
        (
            r.id,
            _status_label(r.status) if table else _status_name(r.status),
            r.spec.template or "inline",
            str(r.turns),
            r.create_time.ToDatetime().isoformat(timespec="seconds"),
            r.spec.input,
        )
        for r in reply.runs
    ]
    _print_rows(
        Output.json if as_json else output,
        reply,
        ("id", "status", "template", "turns", "created", "input"),
        rows,
    )


WIDE_MIN = 12
"""The narrowest a long column (input, title) is shortened to before columns are left out."""
_DROPPED_FIRST = ("input", "title", "created", "updated", "template", "team", "turns", "messages")
"""Columns left out of a table, in this order, when the terminal is too narrow for them all
(the id and the status always stay whole)."""


def _print_rows(
    output: Output,
    reply: Any,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    wide: Sequence[str] = ("input", "title"),
) -> None:
    """A list as a table on a terminal (long values shortened to fit; on a narrow terminal
    whole columns left out, `_DROPPED_FIRST`), as tab-separated lines with every value whole
    when piped (`tsv`), or as the reply's proto3 JSON."""
    if output == Output.json:
        sys.stdout.write(json.dumps(_json(reply), indent=2) + "\n")
        return
    if output == Output.tsv or (output == Output.auto and not console.is_terminal):
        lines = ["\t".join(columns)]
        lines += ["\t".join(" ".join(v.split()) for v in row) for row in rows]
        sys.stdout.write("\n".join(lines) + "\n")
        return
    widths = {
        column: max([len(column), *(len(row[i]) for row in rows)])
        for i, column in enumerate(columns)
    }
    shown = list(columns)
    for column in _DROPPED_FIRST:  # a narrow terminal: whole columns go, none is squeezed
        if (
            sum(min(widths[c], WIDE_MIN) if c in wide else widths[c] for c in shown)
            + (3 * len(shown) + 1)
            <= console.width
        ):
            break
        if column in shown:
            shown.remove(column)
    table = Table()
    for column in shown:
        if column in wide:  # shortened with … to fit
            table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=50)
        else:
            table.add_column(column, no_wrap=True, min_width=widths[column])
    for row in rows:
        table.add_row(
            *(value for column, value in zip(columns, row, strict=True) if column in shown)
        )
    console.print(table)


@runs_app.command("show")
def runs_show(run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """Show one run as JSON."""

    async def call() -> run_service_pb2.GetRunResponse:
        async with open_channel(_conn.orchestrator) as channel:
            return await _conn.runs(channel).GetRun(
                run_service_pb2.GetRunRequest(run_id=run_id), metadata=_conn.metadata
            )

    run = _run(call).run
    console.print_json(data=_json(run))
    if run.status == run_pb2.RUN_STATUS_AWAITING_INPUT and run.pending_input.input_id:
        inputs.print_how_to_answer(err_console, run.id, run.pending_input)


@runs_app.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    reason: Annotated[str, typer.Option(help="Why.")] = "cancelled from the chorus CLI",
) -> None:
    """Cancel a run (a no-op that says so when it has already ended)."""
    reply = _run(lambda: _cancel(run_id, reason))
    console.print(f"{reply.message} (status {_status_label(reply.run.status)})")


@runs_app.command("input")
def runs_input(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    input_id: Annotated[
        str,
        typer.Option(
            "--input-id",
            help="The request answered (input_requested's input_id; default: the one the "
            "run waits for).",
            show_default=False,
        ),
    ] = "",
    approve: Annotated[bool, typer.Option("--approve", help="Approve the tool call.")] = False,
    deny: Annotated[bool, typer.Option("--deny", help="Deny the tool call.")] = False,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (with --deny or --approve; the agent sees it).")
    ] = "",
    text: Annotated[
        str | None,
        typer.Option(
            "--text",
            help="A human agent's answer (its message); '-' reads it from stdin.",
            show_default=False,
        ),
    ] = None,
    request_id: Annotated[
        str, typer.Option(help="Idempotency key: a repeat returns the first result.")
    ] = "",
) -> None:
    """Answer a run's request for input (issue 21): approve or deny a tool call, or give a
    human agent's text. Prints the answer as recorded; exits 7 when the request is not
    pending (answered first by someone else, expired, or the run does not wait)."""
    chosen = [flag for flag, on in (("--approve", approve), ("--deny", deny)) if on]
    if text is not None:
        chosen.append("--text")
    if len(chosen) != 1:
        raise typer.BadParameter(
            "give exactly one answer: --approve, --deny [--reason R] or --text T"
            + (f" (got {' and '.join(chosen)})" if chosen else ""),
            param_hint="--approve / --deny / --text",
        )
    answer: inputs.Answer
    if text is not None:
        if reason:
            raise typer.BadParameter(
                "--reason goes with --approve or --deny, not --text", param_hint="--reason"
            )
        answer = sys.stdin.read() if text == "-" else text
        answer = answer.removesuffix("\n") if text == "-" else answer
        if not answer.strip():
            raise typer.BadParameter("the answer is empty", param_hint="--text")
    else:
        answer = run_pb2.ApprovalDecision(approved=approve, reason=reason)

    async def call() -> run_service_pb2.SubmitRunInputResponse | run_pb2.Run:
        async with open_channel(_conn.orchestrator) as channel:
            stub = _conn.runs(channel)
            answered = input_id
            if not answered:
                run = (
                    await stub.GetRun(
                        run_service_pb2.GetRunRequest(run_id=run_id), metadata=_conn.metadata
                    )
                ).run
                if (
                    run.status != run_pb2.RUN_STATUS_AWAITING_INPUT
                    or not run.pending_input.input_id
                ):
                    return run
                pending = run.pending_input
                if isinstance(answer, str) == inputs.is_approval(pending):
                    asked = "an approval" if inputs.is_approval(pending) else "a text answer"
                    use = "--approve or --deny" if inputs.is_approval(pending) else "--text"
                    raise typer.BadParameter(
                        f"run {run_id} waits for {asked} (input {pending.input_id}): use {use}",
                        param_hint="--approve / --deny / --text",
                    )
                answered = pending.input_id
            return await inputs.submit(
                stub, _conn.metadata, run_id, answered, answer, request_id=request_id
            )

    try:
        reply = asyncio.run(call())
    except ValueError as err:  # a malformed address list
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    except grpc.aio.AioRpcError as err:
        _print_rpc_error(err)
        if inputs.is_not_pending(err):
            err_console.print(
                f"input {input_id} of run {run_id} is not pending: it was answered already "
                "(first answer wins), it expired, or the run went on or ended. "
                f"See `chorus runs show {run_id}`.",
                highlight=False,
            )
            raise typer.Exit(EXIT_INPUT_NOT_PENDING) from None
        raise typer.Exit(EXIT_RPC_ERROR) from None
    if isinstance(reply, run_pb2.Run):
        err_console.print(
            f"[red]error:[/red] run {run_id} is not waiting for input "
            f"(status {_status_label(reply.status)})",
            highlight=False,
        )
        raise typer.Exit(EXIT_INPUT_NOT_PENDING)
    received = reply.event.input_received
    line, _ = inputs.received_text(received)
    console.print(
        f"{line} — input {received.input_id} of run {run_id} (seq {reply.event.seq}); "
        f"the run is {_status_label(reply.run.status)}",
        markup=False,
        highlight=False,
    )


@runs_app.command("export")
def runs_export(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Export a run as JSON, as the gateway's `GET /api/v1/runs/{id}/export` does:
    `{format, exportTime, complete, run, messages, events}` (`complete` is false while the
    run is active: the events so far)."""

    async def call() -> dict[str, Any]:
        async with (
            open_channel(_conn.orchestrator) as orchestrator,
            open_channel(_conn.history) as channel,
        ):
            return await build_run_export(
                _conn.runs(orchestrator),
                _conn.history_stub(channel),
                run_id,
                metadata=_conn.metadata,
            )

    data = json.dumps(_run(call), indent=2)
    if output:
        output.write_text(data)
        console.print(f"wrote {output}")
    else:
        sys.stdout.write(data + "\n")


@runs_app.command("delete")
def runs_delete(run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """Delete a run with its events (an active run is cancelled first). Every later read of
    it is NOT_FOUND; its messages stay in its conversation."""

    async def call() -> None:
        async with open_channel(_conn.orchestrator) as channel:
            await _conn.runs(channel).DeleteRun(
                run_service_pb2.DeleteRunRequest(run_id=run_id), metadata=_conn.metadata
            )

    _run(call)
    console.print(f"deleted run {run_id}")


def _artifact_file(directory: Path, name: str, taken: set[str]) -> Path:
    """Where to save the artifact `name` in `directory`: its base name (a name with a path
    never leaves the directory), `-2`, `-3`, … added when an earlier artifact took it."""
    base = Path(name.replace("\\", "/")).name.lstrip(".") or "artifact"
    stem, suffix = Path(base).stem, Path(base).suffix
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}{suffix}"
    taken.add(candidate)
    return directory / candidate


@runs_app.command("artifacts")
def runs_artifacts(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Directory to save them in (created when missing).",
            file_okay=False,
        ),
    ] = Path("."),
) -> None:
    """Save a run's artifacts (charts, files its tools attached) as files in a directory,
    one per `artifact` event, named as the run named them; prints each file written."""

    async def call() -> list[run_pb2.RunEvent]:
        async with open_channel(_conn.history) as channel:
            return await list_run_events(
                _conn.history_stub(channel), run_id, kinds=["artifact"], metadata=_conn.metadata
            )

    events = _run(call)
    if not events:
        console.print(f"run {run_id} has no artifacts")
        return
    output.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for event in events:
        art = event.artifact
        path = _artifact_file(output, art.name, taken)
        path.write_bytes(art.data)
        console.print(
            f"{path}  {art.mime_type}  {len(art.data)} bytes  ({event.agent}, seq {event.seq})",
            highlight=False,
        )


@conversations_app.command("list")
def conversations_list(
    limit: Annotated[int, typer.Option(min=1, help="Page size.")] = 20,
    output: OutputOption = Output.auto,
) -> None:
    """List your conversations, most recently updated first."""

    async def call() -> history_service_pb2.ListConversationsResponse:
        async with open_channel(_conn.history) as channel:
            return await _conn.history_stub(channel).ListConversations(
                history_service_pb2.ListConversationsRequest(page_size=limit),
                metadata=_conn.metadata,
            )

    reply = _run(call)
    rows = [
        (
            c.id,
            c.title,
            c.team,
            str(c.message_count),
            c.update_time.ToDatetime().isoformat(timespec="seconds"),
        )
        for c in reply.conversations
    ]
    _print_rows(output, reply, ("id", "title", "team", "messages", "updated"), rows)


@conversations_app.command("show")
def conversations_show(
    conversation_id: Annotated[str, typer.Argument(help="The conversation's id.")],
) -> None:
    """Show a conversation and its messages."""

    async def call() -> history_service_pb2.GetConversationResponse:
        async with open_channel(_conn.history) as channel:
            return await _conn.history_stub(channel).GetConversation(
                history_service_pb2.GetConversationRequest(
                    conversation_id=conversation_id, include_messages=True
                ),
                metadata=_conn.metadata,
            )

    reply = _run(call)
    console.print(f"[bold]{reply.conversation.title or reply.conversation.id}[/bold]")
    for m in reply.messages:
        who = m.agent or chat_pb2.Role.Name(m.role).removeprefix("ROLE_").lower()
        console.print(f"[cyan]{who}[/cyan]: ", end="")
        console.print(m.content, markup=False, highlight=False)


@app.command()
def models() -> None:
    """List the configured models."""

    async def call() -> provider_service_pb2.ListModelsResponse:
        async with open_channel(_conn.provider) as channel:
            return await _conn.provider_stub(channel).ListModels(
                provider_service_pb2.ListModelsRequest(), metadata=_conn.metadata
            )

    table = Table("provider", "model", "tools", "reasoning", "context", "credentials")
    for m in _run(call).models:
        table.add_row(
            m.ref.provider,
            m.ref.model,
            "yes" if m.capabilities.tools else "no",
            "yes" if m.capabilities.reasoning else "no",
            str(m.context_window or "?"),
            "yes" if m.credentials_present else "no",
        )
    console.print(table)


@app.command()
def teams() -> None:
    """List the team templates."""

    async def call() -> run_service_pb2.ListTeamTemplatesResponse:
        async with open_channel(_conn.orchestrator) as channel:
            return await _conn.runs(channel).ListTeamTemplates(
                run_service_pb2.ListTeamTemplatesRequest(), metadata=_conn.metadata
            )

    table = Table("name", "kind", "agents", "description")
    from chorus.v1 import team_pb2

    for t in _run(call).templates:
        table.add_row(
            t.name,
            team_pb2.TeamKind.Name(t.spec.kind).removeprefix("TEAM_KIND_").lower(),
            ", ".join(a.name for a in t.spec.agents),
            t.description,
        )
    console.print(table)
