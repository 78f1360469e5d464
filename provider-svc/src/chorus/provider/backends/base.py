"""What every backend implements and shares: the call, its result, upstream errors, events.

A backend's `stream(call, result)` is an async generator of delta events (`text_delta`,
`reasoning_delta`, `tool_call_start` / `_delta` / `_end`). When it ends normally it has set
`result.finish_reason` (and usually `result.usage`); `start`, `usage` and the terminal event
are the servicer's. Anything that goes wrong upstream is raised as `UpstreamError`, which
carries the gRPC code, whether a retry may help, and any Retry-After.

HTTP statuses map to codes as follows (retryable ones marked *): 400, 413, 422
INVALID_ARGUMENT; 401, 403 FAILED_PRECONDITION (our credentials are wrong, not the caller's);
404 NOT_FOUND; 408* DEADLINE_EXCEEDED; 409* ABORTED; 429* RESOURCE_EXHAUSTED; 5xx and 529*
UNAVAILABLE; connection errors* UNAVAILABLE; timeouts* DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import email.utils
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import grpc

from chorus.provider.models import ModelSpec, Usage
from chorus.v1 import chat_pb2, provider_service_pb2

Event = provider_service_pb2.StreamChatResponse
FinishReason = provider_service_pb2.FinishReason


def text_event(text: str) -> Event:
    """A `text_delta` event."""
    event = Event()
    event.text_delta.text = text  # ~2x faster than nesting a TextDelta in the constructor
    return event


def reasoning_event(text: str) -> Event:
    """A `reasoning_delta` event."""
    event = Event()
    event.reasoning_delta.text = text
    return event


class Deltas:
    """The events decoded from one network read, in order.

    With `coalesce`, a run of consecutive text (or reasoning) deltas becomes one event whose
    text is theirs joined (the contract allows "one or more tokens" per delta): those
    arrived together while the caller was still busy with earlier ones, so merging adds no
    latency and saves the busy caller one message per token. The texts are only joined when
    the run ends, so a token costs no event of its own.
    """

    __slots__ = ("_coalesce", "_events", "_kind", "_parts")

    def __init__(self, coalesce: bool) -> None:
        self._coalesce = coalesce
        self._events: list[Event] = []
        self._kind = 0  # 0: no open run, 1: text, 2: reasoning
        self._parts: list[str] = []

    def text(self, text: str) -> None:
        """A `text_delta` of `text` (non-empty)."""
        if self._kind == 1 and self._coalesce:
            self._parts.append(text)
            return
        self._close()
        self._kind = 1
        self._parts = [text]

    def reasoning(self, text: str) -> None:
        """A `reasoning_delta` of `text` (non-empty)."""
        if self._kind == 2 and self._coalesce:
            self._parts.append(text)
            return
        self._close()
        self._kind = 2
        self._parts = [text]

    def add(self, events: list[Event]) -> None:
        """Other events (tool calls), after what came before."""
        if events:
            self._close()
            self._events += events

    def take(self) -> list[Event]:
        """The events so far (the object starts empty again)."""
        self._close()
        events, self._events = self._events, []
        return events

    def _close(self) -> None:
        kind = self._kind
        if kind:
            parts = self._parts
            text = parts[0] if len(parts) == 1 else "".join(parts)
            self._events.append(text_event(text) if kind == 1 else reasoning_event(text))
            self._kind = 0


RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
"""Codes whose failure a later attempt of the same request may not repeat."""


class UpstreamError(Exception):
    """A failed upstream call, normalized.

    Attributes:
        code: the gRPC code the caller sees.
        message: for people; never contains keys.
        retryable: whether another attempt (same or other model) may succeed.
        retry_after_s: the upstream's Retry-After, seconds, if it gave one.
        http_status: the upstream HTTP status, if there was one.
        reason: `ErrorInfo.reason` (`UPSTREAM_RATE_LIMITED`, `UPSTREAM_UNAVAILABLE`, …).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
        http_status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable
        self.retry_after_s = retry_after_s
        self.http_status = http_status
        self.reason = reason or f"UPSTREAM_{code.name}"


def unreachable(provider: str, err: BaseException) -> UpstreamError:
    """The error for a request that never got an HTTP response (retryable UNAVAILABLE).

    The message names the innermost cause (`ConnectionRefusedError`, a DNS failure, a
    connect timeout), which the SDKs' transports wrap differently.
    """
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    return UpstreamError(
        grpc.StatusCode.UNAVAILABLE,
        f"{provider}: cannot reach the upstream ({detail})",
        reason="UPSTREAM_UNREACHABLE",
    )


def bad_shape(provider: str, exc: Exception) -> UpstreamError:
    """The error for an upstream event whose JSON lacks what its type promises (not retried)."""
    return UpstreamError(
        grpc.StatusCode.INTERNAL,
        f"{provider}: the upstream sent an event of unexpected shape ({type(exc).__name__}: {exc})",
        retryable=False,
        reason="UPSTREAM_BAD_STREAM",
    )


_STATUS_CODES: dict[int, tuple[grpc.StatusCode, str]] = {
    400: (grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST"),
    401: (grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_UNAUTHENTICATED"),
    403: (grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_PERMISSION_DENIED"),
    404: (grpc.StatusCode.NOT_FOUND, "UPSTREAM_NOT_FOUND"),
    408: (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT"),
    409: (grpc.StatusCode.ABORTED, "UPSTREAM_CONFLICT"),
    413: (grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_REQUEST_TOO_LARGE"),
    422: (grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_BAD_REQUEST"),
    429: (grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
}


def error_from_http(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> UpstreamError:
    """The `UpstreamError` for an HTTP error response (see the module docstring's table)."""
    code, reason = _STATUS_CODES.get(
        status,
        (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
        if status >= 500
        else (grpc.StatusCode.UNKNOWN, "UPSTREAM_ERROR"),
    )
    retryable = status in (408, 409, 429) or status >= 500
    return UpstreamError(
        code,
        f"upstream HTTP {status}: {message}",
        retryable=retryable,
        retry_after_s=parse_retry_after(headers) if headers is not None else None,
        http_status=status,
        reason=reason,
    )


READ_ERRORS = (aiohttp.ClientError,)
"""What reading an upstream body raises when the connection fails (aiohttp's
`ClientPayloadError`, `ClientConnectionError`, ...)."""


def disconnected(provider: str, err: BaseException) -> UpstreamError:
    """The error for a connection that failed mid-stream (UNAVAILABLE, reason
    UPSTREAM_DISCONNECTED; nothing is retried after the first event)."""
    return UpstreamError(
        grpc.StatusCode.UNAVAILABLE,
        f"{provider}: the upstream connection failed mid-stream ({type(err).__name__})",
        reason="UPSTREAM_DISCONNECTED",
    )


def body_reader(response: aiohttp.ClientResponse) -> Callable[[], Awaitable[bytes]]:
    """A function that returns the next bytes of an open streaming `response`'s body
    (whatever one socket read brought, decompressed when the body has a
    `Content-Encoding`), b"" at its end.

    Raises (from the function): `READ_ERRORS` when the connection fails.
    """
    return response.content.readany


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms`, `retry-after` (seconds or HTTP date); None if absent/bad."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            if name == "retry-after":
                parsed = email.utils.parsedate_tz(value)
                if parsed is not None:
                    return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


@dataclass(slots=True)
class Call:
    """One attempt of a StreamChat request against one model.

    Attributes:
        request: the caller's request (validated).
        model: the model this attempt calls (the request's or a fallback).
        max_output_tokens: the output limit to send (request, else model, else settings).
        attempt: 0-based attempt number within the whole request (all models), which the
            simulator's `fault.attempts` counts against.
    """

    request: provider_service_pb2.StreamChatRequest
    model: ModelSpec
    max_output_tokens: int
    attempt: int = 0


@dataclass(slots=True)
class StreamResult:
    """What a backend learned besides the deltas; read by the servicer after the stream."""

    response_id: str = ""
    usage: Usage | None = None
    finish_reason: int = FinishReason.FINISH_REASON_UNSPECIFIED
    raw_finish_reason: str = ""
    output_chars: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class Backend(ABC):
    """A wire protocol. One instance per configured provider, shared by all requests."""

    @abstractmethod
    def stream(self, call: Call, result: StreamResult) -> AsyncGenerator[Event, None]:
        """Send `call` and yield its delta events.

        Raises (from iteration):
            UpstreamError: the upstream failed (before or after the first event).
        Closing the generator (`aclose`, or cancelling the task iterating it) closes the
        upstream HTTP response at once.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connection pools."""


def finish_reason_of(raw: str | None) -> int:
    """Normalized reason from OpenAI's and Anthropic's raw finish / stop reasons."""
    return _FINISH.get(raw or "", FinishReason.FINISH_REASON_OTHER if raw else 0)


_FINISH: dict[str, int] = {
    "stop": FinishReason.FINISH_REASON_STOP,
    "end_turn": FinishReason.FINISH_REASON_STOP,
    "stop_sequence": FinishReason.FINISH_REASON_STOP,
    "length": FinishReason.FINISH_REASON_LENGTH,
    "max_tokens": FinishReason.FINISH_REASON_LENGTH,
    "model_context_window_exceeded": FinishReason.FINISH_REASON_LENGTH,
    "tool_calls": FinishReason.FINISH_REASON_TOOL_CALLS,
    "function_call": FinishReason.FINISH_REASON_TOOL_CALLS,
    "tool_use": FinishReason.FINISH_REASON_TOOL_CALLS,
    "content_filter": FinishReason.FINISH_REASON_CONTENT_FILTER,
    "refusal": FinishReason.FINISH_REASON_CONTENT_FILTER,
}


def role_name(role: int) -> str:
    """`system`, `user`, `assistant` or `tool`."""
    return _ROLES[role]


_ROLES: dict[int, str] = {
    chat_pb2.ROLE_SYSTEM: "system",
    chat_pb2.ROLE_USER: "user",
    chat_pb2.ROLE_ASSISTANT: "assistant",
    chat_pb2.ROLE_TOOL: "tool",
}
