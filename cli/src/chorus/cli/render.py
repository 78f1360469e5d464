"""Live terminal rendering of a run's events (rich).

Finished messages, tool calls and status lines are printed above a live area that shows the
agent currently speaking (its text as tokens arrive) and a progress bar (turn n of max).
Model output is printed as plain text (rich markup is not interpreted). Every message is
printed under the name of the agent that wrote it — a message outside the agents' turns (a
MagenticOne orchestrator's) too, in its own block.

What a turn shows is printed for good only at its boundaries — a tool call finished, a
message completed, an agent finished (where the orchestrator checkpoints a run); until then
it stays in the live area. So when the run continues on another replica (`run_resumed`:
the events after `from_seq` were the interrupted turn's), that partial message is replaced:
the live area is cleared, a line says the turn restarts, and the turn renders again.

A request for input (issue 21) is a boundary too (the run parks there): `⏸ waiting for
approval of calculator({…}) — input turn1-1`, then its answer, `✔ approved by alice`,
`✖ denied by alice: reason` or `✖ input turn1-1 expired …`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from chorus.cli.inputs import received_text, requested_text
from chorus.v1 import run_pb2

TERMINAL = ("run_completed", "run_failed", "run_cancelled")


class RunRenderer:
    """Renders RunEvents; use as a context manager around the event loop.

    Attributes:
        last_seq: seq of the last event rendered (to resume with `chorus watch --after`).
        outcome: the terminal payload name once the run ended, else None.
        run_id: the run's id once known.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.current_agent = ""
        self.current_text = Text()
        self.progress = Progress(
            TextColumn("[bold]turns"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("turns", total=None)
        self.last_seq = 0
        self.rendered = 0
        """Events rendered by this renderer (a stream that rendered some was up)."""
        self.pending: list[Text] = []
        """Lines of the turn under way since its last boundary: live, printed at the next."""
        self.committed_seq = 0
        """The seq of the last boundary: everything up to it is printed."""
        self.outcome: str | None = None
        self.final_answer = ""
        self.run_id = ""
        self.live = Live(self._view(), console=console, refresh_per_second=15, transient=True)

    def _view(self) -> Group:
        header = (
            Text(f"{self.current_agent} ▸ ", style="bold cyan") if self.current_agent else Text()
        )
        return Group(*self.pending, header + self.current_text, self.progress)

    def __enter__(self) -> RunRenderer:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._flush_text()  # leaving early (Ctrl-C, an error): keep what was shown
        self._commit(self.last_seq)
        self.live.update(self._view())
        self.live.__exit__(None, None, None)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Everything shown so far printed for good and the live area stopped, so a prompt
        (`chorus.cli.inputs`) owns the terminal; the live area comes back after."""
        self._flush_text()
        self._commit(self.committed_seq)
        self.live.update(self._view())
        self.live.stop()
        try:
            yield
        finally:
            self.live.start()
            self.live.update(self._view())

    def note(self, message: str) -> None:
        """A status line of the CLI's own (e.g. following the run again)."""
        self.console.print(Text(message, style="dim"))

    def _emit(self, line: Text) -> None:
        self.pending.append(line)

    def _commit(self, seq: int) -> None:
        """A boundary at `seq`: print the turn's pending lines for good."""
        for line in self.pending:
            self.console.print(line)
        self.pending = []
        self.committed_seq = seq

    def _flush_text(self) -> None:
        if self.current_text.plain.strip():
            self._emit(Text(f"{self.current_agent} ▸ ", style="bold cyan") + self.current_text)
        self.current_text = Text()

    def _resumed(self, event: run_pb2.RunEvent) -> None:
        resumed = event.run_resumed
        self.pending = []  # the interrupted turn's partial message, and its lines
        self.current_text = Text()
        self.current_agent = ""
        self.console.print(
            Text(
                f"— run resumed (attempt {resumed.attempt}) from seq {resumed.from_seq}: "
                "the interrupted turn restarts —",
                style="bold magenta",
            )
        )
        if resumed.from_seq < self.committed_seq:  # never expected: boundaries are stored
            self.note(f"(events {resumed.from_seq + 1}–{self.committed_seq} above are void)")
        self.committed_seq = event.seq

    def handle(self, event: run_pb2.RunEvent) -> None:
        """Render one event (events must arrive in seq order; a repeat is ignored)."""
        if event.seq and event.seq <= self.last_seq:
            return
        self.last_seq = event.seq
        self.rendered += 1
        self.run_id = event.run_id or self.run_id
        kind = event.WhichOneof("payload")
        if kind == "run_resumed":
            self._resumed(event)
        elif kind == "run_started":
            run = event.run_started.run
            self.console.print(
                Text(
                    f"run {event.run_id} started: {run.spec.template or 'inline team'} "
                    f"({len(run.spec.team.agents)} agents, max {run.spec.max_turns or run.spec.team.max_turns} turns)",
                    style="dim",
                )
            )
            if run.spec.max_turns or run.spec.team.max_turns:
                self.progress.update(self.task, total=run.spec.max_turns or run.spec.team.max_turns)
        elif kind == "agent_started":
            self._flush_text()
            self.current_agent = event.agent
        elif kind == "text_delta":
            if event.agent and event.agent != self.current_agent:
                self._flush_text()
                self.current_agent = event.agent
            self.current_text.append(event.text_delta.text)
        elif kind == "reasoning_delta":
            self.current_text.append(event.reasoning_delta.text, style="dim italic")
        elif kind == "message_completed":
            if event.agent and event.agent != self.current_agent:
                # A message outside the agents' turns (a MagenticOne orchestrator's facts,
                # plan, instructions, answer): its own block, under its own name.
                self._flush_text()
                self.current_agent = event.agent
            if not self.current_text.plain.strip():
                self.current_text = Text(event.message_completed.message.content)
            self._flush_text()
            self._commit(event.seq)
        elif kind == "tool_call_started":
            call = event.tool_call_started.call
            self._flush_text()
            self._emit(
                Text(f"  ⚙ {event.agent} calls {call.name}({call.arguments})", style="yellow")
            )
        elif kind == "tool_call_finished":
            done = event.tool_call_finished
            mark = "✓" if done.success else "✗"
            self._emit(
                Text(
                    f"  {mark} {done.call.name} → {done.result[:500]}",
                    style="yellow" if done.success else "red",
                )
            )
            self._commit(event.seq)
        elif kind == "agent_updated":
            self._emit(
                Text(
                    f"  ✎ {event.agent} updated: {', '.join(event.agent_updated.fields)}",
                    style="magenta",
                )
            )
        elif kind == "progress":
            p = event.progress
            self.progress.update(self.task, completed=p.turn, total=p.max_turns or None)
        elif kind == "artifact":
            a = event.artifact
            self._flush_text()
            self._emit(
                Text(
                    f"  ▣ {event.agent} attached {a.name} ({a.mime_type}, {len(a.data)} bytes; "
                    f"save it with `chorus runs artifacts {self.run_id}`)",
                    style="blue",
                )
            )
        elif kind == "input_requested":
            # The run parks here (its checkpoint is stored): a boundary.
            self._flush_text()
            self._emit(
                Text(f"  {requested_text(event.agent, event.input_requested)}", style="bold yellow")
            )
            self._commit(event.seq)
        elif kind == "input_received":
            line, style = received_text(event.input_received)
            self._emit(Text(f"  {line}", style=style))
            self._commit(event.seq)
        elif kind == "agent_finished":
            self._flush_text()
            self._commit(event.seq)
        elif kind in TERMINAL:
            self._flush_text()
            self._commit(event.seq)
            self.outcome = kind
            if kind == "run_completed":
                c = event.run_completed
                self.final_answer = c.final_answer
                self.console.rule("final answer")
                self.console.print(Text(c.final_answer))
                self.console.print(
                    Text(
                        f"completed · agents {', '.join(c.agents)} · tokens in {c.usage.input_tokens} "
                        f"out {c.usage.output_tokens} · {c.stop_reason}",
                        style="green",
                    )
                )
            elif kind == "run_failed":
                e = event.run_failed.error
                self.console.print(
                    Text(
                        f"run failed: {e.message} ({e.reason or e.code}; retryable={e.retryable})",
                        style="bold red",
                    )
                )
            else:
                cancel = event.run_cancelled.cancellation
                self.console.print(
                    Text(
                        f"run cancelled by {cancel.requested_by or '?'}: "
                        f"{cancel.reason or 'no reason given'}",
                        style="bold yellow",
                    )
                )
        self.live.update(self._view())
