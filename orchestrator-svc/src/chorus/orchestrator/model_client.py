"""An autogen `ChatCompletionClient` whose model calls go to provider-svc, each a stream of
the process's ProviderService.StreamChats call (`chorus.orchestrator.chat_streams`).

Every call streams from provider-svc. Text and reasoning pieces go straight to the run's
event log through a `DeltaStream` (REFERENCE.md: a chunk through autogen's message passing
costs ~150 µs; this costs one event); autogen receives only the final `CreateResult` with
content or tool calls, thought and usage — so agents use `model_client_stream=False`.

* The agent's model, temperature, output limit and simulator options are read at each
  call from `spec()`, so UpdateRunAgent takes effect on the next call it allows.
* The autogen cancellation token cancels the stream (provider-svc then closes the
  upstream HTTP stream); the caller sees `asyncio.CancelledError`.
* A provider failure — the stream's error status before it started or an `error` event
  after —
  is reported through `on_error` as a `RunError` (provider's code and retryable flag) and
  raised as `ProviderCallError`. autogen turns agent exceptions into a `RuntimeError`
  carrying only text, so the run learns the code from `on_error`, not from the exception.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import grpc
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from google.protobuf import struct_pb2
from pydantic import BaseModel

from chorus.core.errors import ChorusError, rpc_code
from chorus.core.logging import get_logger
from chorus.orchestrator import metrics
from chorus.orchestrator.chat_streams import ChatStream, ChatStreams
from chorus.orchestrator.deltas import DeltaStream
from chorus.v1 import (
    chat_pb2,
    run_pb2,
    team_pb2,
)
from chorus.v1 import (
    provider_service_pb2 as ps,
)

log = get_logger("chorus.orchestrator.model_client")

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)
_FINISH: dict[int, Literal["stop", "length", "function_calls", "content_filter", "unknown"]] = {
    ps.FINISH_REASON_STOP: "stop",
    ps.FINISH_REASON_LENGTH: "length",
    ps.FINISH_REASON_TOOL_CALLS: "function_calls",
    ps.FINISH_REASON_CONTENT_FILTER: "content_filter",
}
_CHARS_PER_TOKEN = 4
_JOIN_PIECES = 32
"""The text of a call so far is joined into one string every this many pieces: a piece is
~60 bytes of object for a few characters, a live slow stream holds hundreds."""
_DEFAULT_CONTEXT_WINDOW = 128_000
_ROLE = {"SystemMessage": chat_pb2.ROLE_SYSTEM, "UserMessage": chat_pb2.ROLE_USER}


class CallJournal(Protocol):
    """A run's record of the model calls completed in its current step (issue 21)."""

    def replay_call(self, label: str) -> tuple[CreateResult, chat_pb2.Usage] | None:
        """The next recorded result of the client `label` (an agent's name, or
        `orchestrator`) to answer a call with instead of calling provider-svc; None: call."""

    def record_call(self, label: str, result: CreateResult, usage: chat_pb2.Usage) -> None:
        """A call of the client `label` completed with `result` and `usage`."""


class ProviderCallError(Exception):
    """A model call failed; `error` is what the run reports (code, message, retryable)."""

    def __init__(self, error: run_pb2.RunError) -> None:
        super().__init__(error.message)
        self.error = error


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part for part in content if isinstance(part, str))  # images dropped


def to_chat_messages(messages: Sequence[LLMMessage]) -> list[ps.ChatMessage]:
    """autogen LLM messages → provider-svc chat messages (images are not supported and dropped)."""
    out: list[ps.ChatMessage] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append(ps.ChatMessage(role=chat_pb2.ROLE_SYSTEM, content=message.content))
        elif isinstance(message, UserMessage):
            out.append(
                ps.ChatMessage(
                    role=chat_pb2.ROLE_USER, content=_text_of(message.content), name=message.source
                )
            )
        elif isinstance(message, AssistantMessage):
            if isinstance(message.content, str):
                out.append(
                    ps.ChatMessage(
                        role=chat_pb2.ROLE_ASSISTANT, content=message.content, name=message.source
                    )
                )
            else:
                out.append(
                    ps.ChatMessage(
                        role=chat_pb2.ROLE_ASSISTANT,
                        content=message.thought or "",
                        name=message.source,
                        tool_calls=[
                            chat_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments or "{}")
                            for c in message.content
                        ],
                    )
                )
        elif isinstance(message, FunctionExecutionResultMessage):
            for result in message.content:
                out.append(
                    ps.ChatMessage(
                        role=chat_pb2.ROLE_TOOL,
                        content=result.content,
                        tool_call_id=result.call_id,
                        is_error=bool(result.is_error),
                    )
                )
        else:  # pragma: no cover - LLMMessage is a closed union
            raise TypeError(f"unsupported message type {type(message).__name__}")
    return out


def to_tool_definitions(tools: Sequence[Tool | ToolSchema]) -> list[ps.ToolDefinition]:
    """autogen tools or tool schemas → provider-svc tool definitions."""
    out = []
    for tool in tools:
        schema: ToolSchema = tool if isinstance(tool, dict) else tool.schema
        parameters = struct_pb2.Struct()
        # A JSON schema (a TypedDict: mypy sees its values as object); Struct takes JSON values.
        json_schema: dict[str, Any] = dict(
            schema.get("parameters") or {"type": "object", "properties": {}}
        )
        parameters.update(json_schema)
        out.append(
            ps.ToolDefinition(
                name=schema["name"],
                description=schema.get("description", ""),
                parameters=parameters,
            )
        )
    return out


def to_tool_choice(choice: Tool | Literal["auto", "required", "none"]) -> ps.ToolChoice:
    """autogen's tool choice → provider-svc's."""
    if choice == "auto":
        return ps.ToolChoice(mode=ps.ToolChoice.MODE_AUTO)
    if choice == "required":
        return ps.ToolChoice(mode=ps.ToolChoice.MODE_REQUIRED)
    if choice == "none":
        return ps.ToolChoice(mode=ps.ToolChoice.MODE_NONE)
    return ps.ToolChoice(mode=ps.ToolChoice.MODE_TOOL, tool_name=choice.name)


def add_usage(total: chat_pb2.Usage, usage: chat_pb2.Usage) -> None:
    """Add `usage` into `total` (costs add when both sides have one)."""
    total.input_tokens += usage.input_tokens
    total.cached_input_tokens += usage.cached_input_tokens
    total.cache_write_tokens += usage.cache_write_tokens
    total.output_tokens += usage.output_tokens
    total.reasoning_tokens += usage.reasoning_tokens
    total.estimated = total.estimated or usage.estimated
    if usage.HasField("cost_usd"):
        total.cost_usd = (total.cost_usd if total.HasField("cost_usd") else 0.0) + usage.cost_usd


@dataclass(frozen=True, slots=True)
class _Reply:
    """What one model call's stream gave: its text, reasoning (None: none), tool calls,
    usage and finish (None: the stream ended without one)."""

    text: str
    reasoning: str | None
    calls: list[FunctionCall]
    usage: chat_pb2.Usage
    finish: ps.StreamChatResponse.Finish | None


@dataclass(frozen=True, slots=True)
class _Prefetch:
    """A call opened before its agent asked (`ProviderChatClient.prefetch`): its request,
    its stream and the task reading it."""

    request: ps.StreamChatRequest
    call: ChatStream
    reading: asyncio.Task[_Reply]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A prefetched call's reading ended: its error counts as seen (a dropped prefetch's
    error is nobody's; a taken-up one's is raised by `create`)."""
    if not task.cancelled():
        task.exception()


class ProviderChatClient(ChatCompletionClient):
    """A `ChatCompletionClient` for one agent (or a team's orchestrator) of one run.

    Args:
        chats: the process's StreamChats call.
        user: the run's owner, whom the model calls are made for.
        request_id: the run's request id, for provider-svc's logs.
        spec: returns the agent spec whose `model`, `temperature`, `max_output_tokens` and
            `simulator` the next call uses.
        labels: `StreamChatRequest.metadata` (run id, agent) for provider logs.
        deltas: opens the `DeltaStream` of a call; None sends no deltas (orchestrators).
        on_usage: receives each call's usage.
        on_error: receives the `RunError` of a failed call before it is raised.
        timeout_s: deadline of one model call, seconds.
        journal: the run's record of the current step's completed calls (issue 21): a
            call it can replay is answered from it, without provider-svc, deltas or cost
            (a run continuing after a person's answer redoes the step up to the question);
            every completed call is recorded in it. None: every call goes to provider-svc.
    """

    component_type = "model"

    def __init__(
        self,
        *,
        chats: ChatStreams,
        user: str,
        request_id: str | None,
        spec: Callable[[], team_pb2.AgentSpec],
        labels: Mapping[str, str],
        deltas: Callable[[], DeltaStream] | None,
        on_usage: Callable[[chat_pb2.Usage], None],
        on_error: Callable[[run_pb2.RunError], None],
        timeout_s: float,
        journal: CallJournal | None = None,
    ) -> None:
        self._chats = chats
        self._user = user
        self._request_id = request_id
        self._spec = spec
        self._labels = dict(labels)
        self._deltas = deltas
        self._on_usage = on_usage
        self._on_error = on_error
        self._timeout_s = timeout_s
        self._journal = journal
        self._label = self._labels.get("agent", "")
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._last = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._prefetched: _Prefetch | None = None

    def prefetch(self, messages: Sequence[LLMMessage], tools: Sequence[ToolSchema]) -> None:
        """Open the call the agent is expected to make first (`messages`, `tools`, tool
        choice "auto"), before the run has started, and read it at once: provider-svc and
        the upstream work on it while the run's opening write is under way, and its deltas
        go to the run's log as they arrive (held there until that write is stored:
        `RunEventLog.release`), not once the team is built and asks. The agent's first
        `create` takes the call up and returns its result; its request should be exactly
        this one (a change staged meanwhile — UpdateRunAgent — applies from the next call:
        the deltas of this one are in the log already). `drop_prefetch` cancels an unused
        one."""
        self.drop_prefetch()
        request = self.build_request(messages, tools, "auto")
        call = self._open(request)
        reading = asyncio.get_running_loop().create_task(self._read(call))
        reading.add_done_callback(_retrieve)
        self._prefetched = _Prefetch(request, call, reading)

    def drop_prefetch(self) -> None:
        """Cancel the prefetched call if no `create` took it up (the run did not start, or
        stopped before its agent asked)."""
        if self._prefetched is not None:
            self._prefetched.call.cancel()
            self._prefetched.reading.cancel()
            self._prefetched = None
            metrics.MODEL_CALL_PREFETCHES.labels("dropped").inc()

    def _open(self, request: ps.StreamChatRequest) -> ChatStream:
        return self._chats.open(
            request, user=self._user, request_id=self._request_id, timeout_s=self._timeout_s
        )

    def _take_prefetch(self, request: ps.StreamChatRequest) -> _Prefetch | None:
        """The prefetched call, taken up by the call of `request` (None: nothing prefetched)."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None:
            if prefetched.request == request:
                metrics.MODEL_CALL_PREFETCHES.labels("used").inc()
            else:  # its deltas are in the log: it is the agent's first call all the same
                metrics.MODEL_CALL_PREFETCHES.labels("mismatch").inc()
                log.warning("model_call_prefetch_mismatch", labels=self._labels)
        return prefetched

    def build_request(
        self,
        messages: Sequence[LLMMessage],
        tools: Sequence[Tool | ToolSchema],
        tool_choice: Tool | Literal["auto", "required", "none"],
    ) -> ps.StreamChatRequest:
        """The StreamChatRequest of a call with the agent's current settings."""
        spec = self._spec()
        request = ps.StreamChatRequest(
            model=spec.model, messages=to_chat_messages(messages), metadata=self._labels
        )
        if tools:
            request.tools.extend(to_tool_definitions(tools))
            if tool_choice != "auto":
                request.tool_choice.CopyFrom(to_tool_choice(tool_choice))
        if spec.HasField("temperature"):
            request.temperature = spec.temperature
        if spec.HasField("max_output_tokens"):
            request.max_output_tokens = spec.max_output_tokens
        if spec.HasField("simulator"):
            request.simulator.CopyFrom(spec.simulator)
        return request

    def _fail(self, error: run_pb2.RunError) -> ProviderCallError:
        metrics.MODEL_CALLS.labels("error").inc()
        self._on_error(error)
        return ProviderCallError(error)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        """One streamed model call; deltas go to the run, the result to autogen.

        Raises:
            asyncio.CancelledError: the cancellation token fired (the call is cancelled).
            ProviderCallError: provider-svc failed the call (reported via `on_error` first).
            ValueError: structured output was asked for (not supported).
        """
        return await self._create(messages, tools, tool_choice, json_output, cancellation_token)

    async def _create(
        self,
        messages: Sequence[LLMMessage],
        tools: Sequence[Tool | ToolSchema],
        tool_choice: Tool | Literal["auto", "required", "none"],
        json_output: bool | type[BaseModel] | None,
        cancellation_token: CancellationToken | None,
        on_text: Callable[[str], None] | None = None,
    ) -> CreateResult:
        if isinstance(json_output, type):
            raise ValueError("structured output is not supported by the Chorus model client")
        if self._journal is not None:
            replayed = self._journal.replay_call(self._label)
            if replayed is not None:
                return self._completed(*replayed)
        request = self.build_request(messages, tools, tool_choice)
        prefetched = self._take_prefetch(request)
        call = prefetched.call if prefetched is not None else self._open(request)
        if cancellation_token is not None:

            def cancel_call() -> None:  # add_callback wants `() -> None`; cancel gives a bool
                call.cancel()

            cancellation_token.add_callback(cancel_call)
        try:
            reply = await (
                prefetched.reading if prefetched is not None else self._read(call, on_text)
            )
        except ProviderCallError as exc:  # the stream's `error` event
            raise self._fail(exc.error) from None
        except ChorusError as exc:  # the stream's error status, or the call's failure
            if (
                exc.code == grpc.StatusCode.CANCELLED
                and cancellation_token is not None
                and cancellation_token.is_cancelled()
            ):
                metrics.MODEL_CALLS.labels("cancelled").inc()
                raise asyncio.CancelledError() from None
            raise self._fail(
                run_pb2.RunError(
                    code=rpc_code(exc.code),
                    message=f"model call failed: {exc.message}",
                    retryable=exc.code in _RETRYABLE,
                    reason="PROVIDER_ERROR",
                )
            ) from None
        except asyncio.CancelledError:
            call.cancel()
            if prefetched is not None:
                prefetched.reading.cancel()
            metrics.MODEL_CALLS.labels("cancelled").inc()
            raise
        if prefetched is not None and on_text is not None and reply.text:
            on_text(reply.text)  # read before this call took it up: one piece
        if reply.finish is None:  # the stream ended without its terminal event
            raise self._fail(
                run_pb2.RunError(
                    code=rpc_code(grpc.StatusCode.UNAVAILABLE),
                    message="model call ended without a finish event",
                    retryable=True,
                    reason="PROVIDER_ERROR",
                )
            )
        metrics.MODEL_CALLS.labels("ok").inc()
        usage = reply.usage
        request_usage = RequestUsage(
            prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens
        )
        if reply.calls:
            result = CreateResult(
                finish_reason="function_calls",
                content=reply.calls,
                usage=request_usage,
                cached=False,
                thought=reply.text or reply.reasoning,
            )
        else:
            result = CreateResult(
                finish_reason=_FINISH.get(reply.finish.reason, "unknown"),
                content=reply.text,
                usage=request_usage,
                cached=False,
                thought=reply.reasoning,
            )
        if self._journal is not None:
            self._journal.record_call(self._label, result, usage)
        return self._completed(result, usage)

    async def _read(self, call: ChatStream, on_text: Callable[[str], None] | None = None) -> _Reply:
        """Read one call's stream to its end: text and reasoning pieces go to the run's log
        (`DeltaStream`) and to `on_text` as they arrive; the rest is gathered.

        Raises:
            ProviderCallError: the stream's `error` event (not reported yet: `create` does).
            chorus.core.errors.ChorusError: the stream's error status, or CANCELLED after
                `call.cancel()`.
        """
        deltas = self._deltas() if self._deltas is not None else None
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[FunctionCall] = []
        usage = chat_pb2.Usage()
        finish: ps.StreamChatResponse.Finish | None = None
        try:
            async for response in call:
                kind = response.WhichOneof("event")
                if kind == "text_delta":
                    piece = response.text_delta.text
                    text.append(piece)
                    if len(text) == _JOIN_PIECES:  # a slow stream's pieces are small objects
                        text[:] = ["".join(text)]
                    if deltas is not None:
                        deltas.text(piece)
                    if on_text is not None:
                        on_text(piece)
                elif kind == "reasoning_delta":
                    piece = response.reasoning_delta.text
                    reasoning.append(piece)
                    if len(reasoning) == _JOIN_PIECES:
                        reasoning[:] = ["".join(reasoning)]
                    if deltas is not None:
                        deltas.reasoning(piece)
                elif kind == "tool_call_end":
                    c = response.tool_call_end.call
                    calls.append(FunctionCall(id=c.id, name=c.name, arguments=c.arguments or "{}"))
                elif kind == "usage":
                    usage = response.usage
                elif kind == "finish":
                    finish = response.finish
                elif kind == "error":
                    err = response.error
                    raise ProviderCallError(
                        run_pb2.RunError(
                            code=err.code,
                            message=f"model call failed: {err.message}",
                            retryable=err.retryable,
                            reason="PROVIDER_ERROR",
                        )
                    )
        finally:
            if deltas is not None:
                deltas.flush()
        return _Reply("".join(text), "".join(reasoning) or None, calls, usage, finish)

    def _completed(self, result: CreateResult, usage: chat_pb2.Usage) -> CreateResult:
        """Count a completed (or replayed) call's usage; returns `result`."""
        self._on_usage(usage)
        self._last = result.usage
        self._total = RequestUsage(
            prompt_tokens=self._total.prompt_tokens + result.usage.prompt_tokens,
            completion_tokens=self._total.completion_tokens + result.usage.completion_tokens,
        )
        return result

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """Text chunks as they arrive, then the `CreateResult` (deltas also go to the run)."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.ensure_future(
            self._create(
                messages, tools, tool_choice, json_output, cancellation_token, queue.put_nowait
            )
        )
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
            yield task.result()
        finally:
            task.cancel()

    async def close(self) -> None:
        """Nothing to close: the channel belongs to the process."""

    def actual_usage(self) -> RequestUsage:
        """Usage of the last call."""
        return self._last

    def total_usage(self) -> RequestUsage:
        """Usage of every call of this client."""
        return self._total

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        """A rough estimate (4 characters per token); provider-svc reports real usage."""
        chars = sum(len(m.content) for m in to_chat_messages(messages))
        chars += sum(len(json.dumps(t if isinstance(t, dict) else t.schema)) for t in tools)
        return chars // _CHARS_PER_TOKEN + 1

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        """Estimated tokens left in a 128k context window."""
        return max(0, _DEFAULT_CONTEXT_WINDOW - self.count_tokens(messages, tools=tools))

    @property
    def capabilities(self) -> ModelCapabilities:
        """Deprecated autogen API: the same as `model_info`."""
        return {"vision": False, "function_calling": True, "json_output": False}

    @property
    def model_info(self) -> ModelInfo:
        """Tools yes; no images, JSON mode or structured output through this client."""
        return ModelInfo(
            vision=False,
            function_calling=True,
            json_output=False,
            family=ModelFamily.UNKNOWN,
            structured_output=False,
            multiple_system_messages=True,
        )
