"""The `simulator` provider: an offline, deterministic model for tests, demos and benchmarks.

What it says is decided by `chorus.provider.backends.simulator_script` (plausible prose,
tool calls, answers to autogen's orchestration prompts). This module streams it:

* **Determinism.** `SimulatorOptions.seed` seeds the generator; 0 derives the seed from the
  request's messages, tools and model (SHA-256 of their serialized form). Same seed, same
  request → the same events.
* **Timing.** It waits `time_to_first_token`, then streams at `tokens_per_second` (pacing
  against the start time, so slow scheduling catches up instead of drifting); 0 means as
  fast as possible, without any per-token sleep. Defaults come from settings
  (`CHORUS_SIMULATOR_TIME_TO_FIRST_TOKEN_S`, `CHORUS_SIMULATOR_TOKENS_PER_SECOND`);
  model `sim-fast` defaults to 0 / as fast as possible.
* **Models.** `sim-1` (default), `sim-fast` (no delays), `sim-reasoning` (reasoning deltas
  before the text). All report usage and have nominal prices.
* **Faults** (`SimulatorOptions.fault`), on the first `attempts` attempts of the request
  (0 = every attempt; attempts are counted across retries and fallbacks):
  * `KIND_ERROR`: an upstream error with `code` (default UNAVAILABLE) after `after_tokens`
    tokens; retried by provider-svc when nothing was streamed yet and the code is
    retryable (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, INTERNAL,
    UNKNOWN); after a token, it ends the stream with an `error` event.
  * `KIND_RATE_LIMIT`: an HTTP-429-like RESOURCE_EXHAUSTED with `retry_after`, before
    anything is streamed (retried after Retry-After, within the configured cap).
  * `KIND_STALL`: after `after_tokens` tokens nothing more is sent, until provider-svc's
    first-event or idle timeout (or the caller) ends the wait.
  * `KIND_DROP`: the "connection" drops after `after_tokens` tokens: UNAVAILABLE with
    `retryable = false` — never retried, neither before nor after the first token — so
    callers can test their non-retryable path.
* **Observability for tests.** `received` keeps the last 1000 requests (one entry per
  attempt); `active_streams` counts streams currently open, so a test can see a
  cancellation reach the simulator.

A token is one `text_delta` (or `reasoning_delta`) event; a tool call is sent as start,
argument fragments and end.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import AsyncGenerator, Iterator

import grpc

from chorus.core.errors import status_code_from_rpc
from chorus.provider.backends.base import (
    Backend,
    Call,
    Event,
    StreamResult,
    UpstreamError,
)
from chorus.provider.backends.simulator_script import Script, write_script
from chorus.provider.models import Usage, estimate_input_tokens
from chorus.provider.settings import Settings
from chorus.v1 import chat_pb2, provider_service_pb2

_Fault = chat_pb2.SimulatorFault
_TextDelta = Event.TextDelta
_ReasoningDelta = Event.ReasoningDelta
_ToolStart = Event.ToolCallStart
_ToolDelta = Event.ToolCallDelta
_ToolEnd = Event.ToolCallEnd
_ARG_FRAGMENT = 16
"""Characters per tool-argument fragment (OpenAI streams arguments in small pieces)."""


def request_seed(request: provider_service_pb2.StreamChatRequest, model: str) -> int:
    """The seed used when `simulator.seed` is 0: a hash of messages, tools and model."""
    digest = hashlib.sha256(model.encode())
    for m in request.messages:
        digest.update(m.SerializeToString(deterministic=True))
    for t in request.tools:
        digest.update(t.SerializeToString(deterministic=True))
    return int.from_bytes(digest.digest()[:8], "big")


class Simulator(Backend):
    """The simulator backend (one per process).

    Attributes:
        received: the last 1000 requests, one per attempt, oldest first.
        active_streams: simulator streams currently open.
    """

    def __init__(self, settings: Settings) -> None:
        self._ttft = settings.simulator_time_to_first_token_s
        self._tps = settings.simulator_tokens_per_second
        self.received: collections.deque[provider_service_pb2.StreamChatRequest] = (
            collections.deque(maxlen=1000)
        )
        self.active_streams = 0

    def _timing(self, call: Call) -> tuple[float, float]:
        opts = call.request.simulator
        fast = call.model.name == "sim-fast"
        ttft = 0.0 if fast else self._ttft
        tps = 0.0 if fast else self._tps
        if opts.HasField("time_to_first_token"):
            ttft = opts.time_to_first_token.ToNanoseconds() / 1e9
        if opts.HasField("tokens_per_second"):
            tps = opts.tokens_per_second
        return ttft, tps

    async def stream(self, call: Call, result: StreamResult) -> AsyncGenerator[Event, None]:
        request = call.request
        self.received.append(request)
        self.active_streams += 1
        try:
            opts = request.simulator
            fault = opts.fault
            faulty = fault.kind != _Fault.KIND_UNSPECIFIED and (
                fault.attempts == 0 or call.attempt < fault.attempts
            )
            if faulty and fault.kind == _Fault.KIND_RATE_LIMIT:
                raise UpstreamError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "simulator: rate limited (injected fault)",
                    retry_after_s=fault.retry_after.ToNanoseconds() / 1e9,
                    http_status=429,
                    reason="UPSTREAM_RATE_LIMITED",
                )
            seed = opts.seed or request_seed(request, call.model.name)
            script = write_script(
                request,
                reasoning_model=call.model.name == "sim-reasoning",
                seed=seed,
                max_output_tokens=call.max_output_tokens,
                output_tokens=opts.output_tokens,
            )
            result.response_id = f"sim-{seed & 0xFFFFFFFFFFFF:012x}-{call.attempt}"
            tail = _tool_events(script)
            total = len(script.reasoning) + len(script.text) + len(tail)
            limit = min(total, max(0, fault.after_tokens)) if faulty else total
            ttft, tps = self._timing(call)
            if ttft > 0:
                await asyncio.sleep(ttft)
            # Events are built as they are sent (not all up front) so the first token of a
            # long reply leaves at once; reasoning, then text, then tool-call events.
            sent = 0
            if tps > 0:
                loop = asyncio.get_running_loop()
                interval = 1.0 / tps
                start = loop.time()
                for event in _stream(script, tail, limit):
                    delay = start + sent * interval - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent += 1
                    yield event
            else:
                for event in _stream(script, tail, limit):  # no sleep, no task per token
                    yield event
            if faulty:
                await _fire(fault)
            result.usage = Usage(
                input_tokens=estimate_input_tokens(request),
                output_tokens=len(script.text)
                + len(script.reasoning)
                + sum(max(1, len(a) // 4) for _, _, a in script.tool_calls),
                reasoning_tokens=len(script.reasoning),
            )
            result.finish_reason = script.finish
            result.raw_finish_reason = script.raw_finish
        finally:
            self.active_streams -= 1


async def _fire(fault: chat_pb2.SimulatorFault) -> None:
    """Raise (or hang for) the injected fault."""
    if fault.kind == _Fault.KIND_ERROR:
        code = status_code_from_rpc(fault.code) if fault.code else grpc.StatusCode.UNAVAILABLE
        raise UpstreamError(
            code,
            f"simulator: injected {code.name} after {fault.after_tokens} tokens",
            reason="SIMULATED_ERROR",
        )
    if fault.kind == _Fault.KIND_DROP:
        raise UpstreamError(
            grpc.StatusCode.UNAVAILABLE,
            f"simulator: connection dropped after {fault.after_tokens} tokens (injected fault)",
            retryable=False,
            reason="UPSTREAM_DISCONNECTED",
        )
    if fault.kind == _Fault.KIND_STALL:
        await asyncio.Event().wait()  # until a timeout or the caller cancels us


def _stream(script: Script, tail: list[Event], limit: int) -> Iterator[Event]:
    """The first `limit` events of `script`: reasoning, text, then the tool-call `tail`."""
    if limit <= 0:
        return
    reasoning, text = script.reasoning, script.text
    n = min(limit, len(reasoning))
    for i in range(n):
        yield Event(reasoning_delta=_ReasoningDelta(text=reasoning[i]))
    limit -= n
    n = min(limit, len(text))
    for i in range(n):
        yield Event(text_delta=_TextDelta(text=text[i]))
    limit -= n
    yield from tail[:limit]


def _tool_events(script: Script) -> list[Event]:
    out: list[Event] = []
    for index, (call_id, name, args) in enumerate(script.tool_calls):
        out.append(Event(tool_call_start=_ToolStart(index=index, id=call_id, name=name)))
        for i in range(0, len(args), _ARG_FRAGMENT):
            out.append(
                Event(
                    tool_call_delta=_ToolDelta(
                        index=index, arguments_delta=args[i : i + _ARG_FRAGMENT]
                    )
                )
            )
        out.append(
            Event(
                tool_call_end=_ToolEnd(
                    index=index, call=chat_pb2.ToolCall(id=call_id, name=name, arguments=args)
                )
            )
        )
    return out
