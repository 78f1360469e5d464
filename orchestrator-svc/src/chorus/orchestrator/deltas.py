"""Token deltas of one model stream → `text_delta` / `reasoning_delta` run events.

Pieces arriving within `coalesce_s` of the last emitted delta are joined into one event
(`RunEvent.TextDelta` allows it): the first piece of a burst goes out at once, so coalescing
never adds time to first token, and a timer — one per burst, not per token — sends the rest
at most `coalesce_s` later. A change between text and reasoning flushes first, so the order
of pieces is kept. `coalesce_s = 0` emits one event per piece.
"""

from __future__ import annotations

import asyncio

from chorus.orchestrator.events import RunEventLog
from chorus.v1 import run_pb2

_TEXT = 1
_REASONING = 2
_RunEvent = run_pb2.RunEvent


class DeltaStream:
    """The delta events of one model call of one agent.

    Args:
        log: the run's event log.
        agent: the agent the deltas belong to (`RunEvent.agent`).
        coalesce_s: joining window in seconds; 0 turns joining off.
    """

    __slots__ = ("_agent", "_kind", "_last", "_log", "_loop", "_parts", "_timer", "_window")

    def __init__(self, log: RunEventLog, agent: str, coalesce_s: float) -> None:
        self._log = log
        self._agent = agent
        self._window = coalesce_s
        self._loop = asyncio.get_running_loop()
        self._parts: list[str] = []
        self._kind = _TEXT
        self._last = -1e9
        self._timer: asyncio.TimerHandle | None = None

    def _emit(self, kind: int, text: str) -> None:
        event = _RunEvent(agent=self._agent)  # fields set in place: no sub-message copied
        if kind == _TEXT:
            event.text_delta.text = text
        else:
            event.reasoning_delta.text = text
        self._log.emit_delta(event)

    def _add(self, kind: int, piece: str) -> None:
        if not piece:
            return
        if self._window == 0:
            self._emit(kind, piece)
            return
        if self._parts and kind != self._kind:
            self.flush()
        self._kind = kind
        now = self._loop.time()
        if not self._parts and now - self._last >= self._window:
            self._emit(kind, piece)
            self._last = now
            return
        self._parts.append(piece)
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + self._window, self.flush)

    def text(self, piece: str) -> None:
        """A piece of the reply's text."""
        self._add(_TEXT, piece)

    def reasoning(self, piece: str) -> None:
        """A piece of the model's reasoning."""
        self._add(_REASONING, piece)

    def flush(self) -> None:
        """Emit what is buffered now (end of stream, tool call, timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._parts and not self._log.ended:
            text = self._parts[0] if len(self._parts) == 1 else "".join(self._parts)
            self._parts.clear()
            self._emit(self._kind, text)
            self._last = self._loop.time()
        self._parts.clear()
