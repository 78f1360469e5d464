"""Assembles streamed tool calls into `tool_call_start` / `_delta` / `_end` events.

Providers key fragments differently (OpenAI by `tool_calls[].index`, Anthropic by content
block index, counting text blocks too). Callers pass their own key; each call gets the next
0-based `index` in order of first appearance, stable for all its events. At the end the
arguments must parse as a JSON object (`{}` when the model sent none); anything else is an
`UpstreamError` (INTERNAL, reason UPSTREAM_INVALID_TOOL_ARGUMENTS, retryable).
"""

from __future__ import annotations

import grpc
import orjson

from chorus.provider.backends.base import Event, UpstreamError
from chorus.v1 import chat_pb2

_Start = Event.ToolCallStart
_Delta = Event.ToolCallDelta
_End = Event.ToolCallEnd


class _Pending:
    __slots__ = ("args", "ended", "id", "index", "name", "started")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id = ""
        self.name = ""
        self.args: list[str] = []
        self.started = False
        self.ended = False


class ToolCalls:
    """The tool calls of one reply, by the provider's key."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[object, _Pending] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def fragment(self, key: object, call_id: str, name: str, arguments: str) -> list[Event]:
        """Events for one fragment: `start` once the call's name is known, then deltas.

        Fragments that arrive before the name (some OpenAI-compatible servers) are held
        and sent right after `start`.
        """
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _Pending(len(self._calls))
        if call_id and not call.id:
            call.id = call_id
        if name and not call.name:
            call.name = name
        out: list[Event] = []
        if not call.started and call.name:
            call.started = True
            if not call.id:  # some local servers send none; ids must be unique per reply
                call.id = f"call_{call.index}"
            out.append(Event(tool_call_start=_Start(index=call.index, id=call.id, name=call.name)))
            held = "".join(call.args)
            if held:
                out.append(Event(tool_call_delta=_Delta(index=call.index, arguments_delta=held)))
        if arguments:
            call.args.append(arguments)
            if call.started:
                out.append(
                    Event(tool_call_delta=_Delta(index=call.index, arguments_delta=arguments))
                )
        return out

    def end(self, key: object) -> Event | None:
        """The `tool_call_end` of one call (None if unknown or already ended).

        Raises:
            UpstreamError: no name, or arguments that are not a JSON object.
        """
        call = self._calls.get(key)
        if call is None or call.ended:
            return None
        if not call.name:
            raise UpstreamError(
                grpc.StatusCode.INTERNAL,
                f"the model sent tool call {call.index} without a name",
                retryable=True,
                reason="UPSTREAM_INVALID_TOOL_CALL",
            )
        text = "".join(call.args).strip() or "{}"
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamError(
                grpc.StatusCode.INTERNAL,
                f"the model sent arguments for tool {call.name!r} (call {call.index}) "
                "that are not a JSON object",
                retryable=True,
                reason="UPSTREAM_INVALID_TOOL_ARGUMENTS",
            )
        call.ended = True
        return Event(
            tool_call_end=_End(
                index=call.index,
                call=chat_pb2.ToolCall(id=call.id, name=call.name, arguments=text),
            )
        )

    def end_all(self) -> list[Event]:
        """`tool_call_end` for every call not yet ended, in index order."""
        out = []
        for key in list(self._calls):
            event = self.end(key)
            if event is not None:
                out.append(event)
        return out
