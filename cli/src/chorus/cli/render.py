"""Live terminal rendering of a run's events (rich).

Finished messages, tool calls and status lines are printed above a live area that shows the
agent currently speaking (its text as tokens arrive) and a progress bar (turn n of max).
Model output is printed as plain text (rich markup is not interpreted).
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

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
        self.live = Live(self._view(), console=console, refresh_per_second=15, transient=True)
        self.last_seq = 0
        self.outcome: str | None = None
        self.final_answer = ""
        self.run_id = ""

    def _view(self) -> Group:
        header = (
            Text(f"{self.current_agent} ▸ ", style="bold cyan") if self.current_agent else Text()
        )
        return Group(header + self.current_text, self.progress)

    def __enter__(self) -> RunRenderer:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def _flush_text(self) -> None:
        if self.current_text.plain.strip():
            self.console.print(
                Text(f"{self.current_agent} ▸ ", style="bold cyan") + self.current_text
            )
        self.current_text = Text()

    def handle(self, event: run_pb2.RunEvent) -> None:
        """Render one event (events must arrive in seq order)."""
        self.last_seq = event.seq
        self.run_id = event.run_id or self.run_id
        kind = event.WhichOneof("payload")
        if kind == "run_started":
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
            if not self.current_text.plain.strip():
                self.current_text = Text(event.message_completed.message.content)
            self._flush_text()
        elif kind == "tool_call_started":
            call = event.tool_call_started.call
            self._flush_text()
            self.console.print(
                Text(f"  ⚙ {event.agent} calls {call.name}({call.arguments})", style="yellow")
            )
        elif kind == "tool_call_finished":
            done = event.tool_call_finished
            mark = "✓" if done.success else "✗"
            self.console.print(
                Text(
                    f"  {mark} {done.call.name} → {done.result[:500]}",
                    style="yellow" if done.success else "red",
                )
            )
        elif kind == "agent_updated":
            self.console.print(
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
            self.console.print(
                Text(f"  ▣ artifact {a.name} ({a.mime_type}, {len(a.data)} bytes)", style="blue")
            )
        elif kind in TERMINAL:
            self._flush_text()
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
                c = event.run_cancelled.cancellation
                self.console.print(
                    Text(
                        f"run cancelled by {c.requested_by or '?'}: {c.reason or 'no reason given'}",
                        style="bold yellow",
                    )
                )
        self.live.update(self._view())
