"""Run events → OpenAI Responses streaming events and Response objects, and → Chat
Completions chunks.

`ResponseMapper` is a pure function of a run's event log: fed the events in seq order it
emits the same OpenAI events with the same `sequence_number`s every time, so
`GET /v1/responses/{id}?stream=true&starting_after=N` replays the log from seq 1 and sends
the events numbered above N — exact resume on any replica, after any restart, for the life
of the run. Shapes follow the `openai` SDK's types (`openai.types.responses`):

| run event | Responses events |
|---|---|
| `run_started` | `response.created`, `response.in_progress` |
| first `text_delta` of an agent's message | `response.output_item.added` (message, `agent`), `response.content_part.added` |
| `text_delta` | `response.output_text.delta` |
| `reasoning_delta` | `response.output_item.added` (reasoning) + `response.reasoning_summary_part.added` once, then `response.reasoning_summary_text.delta` |
| `message_completed` | the rest of the text as a delta if any, `response.output_text.done`, `response.content_part.done`, `response.output_item.done` |
| `tool_call_started` | `response.output_item.added` (function_call), `response.function_call_arguments.delta`, `response.function_call_arguments.done` |
| `tool_call_finished` | `response.output_item.done` (function_call with `output`; `incomplete` when the tool failed) |
| `run_resumed` | `response.output_item.done` with status `incomplete` for every item the interrupted turn left open |
| `run_completed` | `response.completed` (`response.incomplete` with `max_messages` when a team that ends itself ran out of turns) |
| `run_failed` | `response.failed` |
| `run_cancelled` | `response.cancelled` (status `cancelled`; OpenAI defines no event for it) |
| `input_requested`, approval | the tool's `function_call` item done `incomplete`, an `mcp_approval_request` item (added, done), `response.completed`: the response ends, the run waits |
| `input_requested`, text | a message of the asking (human) agent whose text is the prompt, `response.completed` |
| `input_received` | starts the next response of the run (`from_seq`): `response.created`, `response.in_progress` |
| `agent_started`, `agent_finished`, `progress`, `agent_updated`, `artifact` | none |

A run that asks a person (issue 21) is one response per part: the first ends at the first
`input_requested` (status `completed`, the request as its last output item — as OpenAI ends
a response with an MCP approval request); the client answers with a new response
(`previous_response_id` + an `mcp_approval_response` item, or a text message for a text
request), whose id is `resp_<run hex>_<seq of the input_received>` and whose mapper starts
at that seq (`from_seq`), until the next request or the run's end.

Every output item carries the agent that produced it as an extra `agent` field (the SDK's
models keep unknown fields: `item.agent`, or `item.model_extra["agent"]`).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from chorus.gateway.openai_api import ids
from chorus.v1 import chat_pb2, run_pb2, team_pb2

INSTRUCTIONS_MARKER = "\n\n# Instructions from the caller\n"
"""Separates an agent's own system prompt from the request's `instructions` appended to it."""

REQUEST_ID_PREFIX = "oai:"
"""`RunSpec.request_id` of runs started over `/v1`: `oai:<flags>:<model>:<key>`."""

_ENDS_ITSELF = (team_pb2.TEAM_KIND_SELECTOR, team_pb2.TEAM_KIND_MAGENTIC_ONE)

APPROVAL_SERVER_LABEL = "chorus"
"""`server_label` of the `mcp_approval_request` items: the tools run on the Chorus server."""

_TERMINAL_STATUS = {
    run_pb2.RUN_STATUS_COMPLETED: "completed",
    run_pb2.RUN_STATUS_FAILED: "failed",
    run_pb2.RUN_STATUS_CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class ResponseContext:
    """What a response echoes besides its output, all recoverable from the run record.

    Attributes:
        model: the model id asked for (`chorus/duet`, `simulator/sim-1`).
        background: created with `background: true`.
        instructions: the request's `instructions`, or None.
        temperature: the temperature every agent uses, when they all use the same.
        max_output_tokens: the per-turn limit every agent uses, when they all use the same.
        conversation: the Chorus conversation id.
        ends_itself: the team stops on its own (termination text, a selector or an
            orchestrator), so reaching `max_turns` means it was cut short.
        metadata: the response's metadata (OpenAI: 16 pairs).
        store: false when the request had `store: false` (the run is deleted once it ends).
        previous_response_id: the request's `previous_response_id`, or None.
    """

    model: str
    background: bool = False
    instructions: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    conversation: str = ""
    ends_itself: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    store: bool = True
    previous_response_id: str | None = None


MAX_REQUEST_ID_CHARS = 128
"""`RunSpec.request_id`'s limit (run.proto)."""


def _compact_run_id(run_id: str) -> str:
    """A run id (UUID) as 22 base64url characters."""
    return base64.urlsafe_b64encode(uuid.UUID(run_id).bytes).decode().rstrip("=")


def _expand_run_id(text: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(text + "==")
        return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else None
    except ValueError:
        return None


def request_id(
    model: str, key: str, *, background: bool, store: bool = True, previous_run: str = ""
) -> str:
    """The `RunSpec.request_id` of a run started over `/v1`: `oai:<flags>:<model>:<key>`.

    It carries what the response echoes beyond the run itself, so the response can be
    rebuilt from the run record alone (any replica, after a restart). `<flags>`: `b`
    (background) or `-`, then `n` when `store` is false, then `.` and the previous
    response's run id as 22 base64url characters when the request had a
    `previous_response_id` — left out when it would make the id longer than 128
    characters (a model id over 75 characters; the response then echoes null).
    """
    flags = ("b" if background else "-") + ("" if store else "n")
    if previous_run:
        longer = f"{REQUEST_ID_PREFIX}{flags}.{_compact_run_id(previous_run)}:{model}:{key}"
        if len(longer) <= MAX_REQUEST_ID_CHARS:
            return longer
    return f"{REQUEST_ID_PREFIX}{flags}:{model}:{key}"


def _common(values: list[Any]) -> Any:
    return values[0] if values and all(v == values[0] for v in values) else None


def context_of(run: run_pb2.Run) -> ResponseContext:
    """The `ResponseContext` of a run (any run: one started elsewhere names its template)."""
    spec = run.spec
    background = False
    store = True
    previous: str | None = None
    model = f"chorus/{spec.template}" if spec.template else "chorus/team"
    if spec.request_id.startswith(REQUEST_ID_PREFIX):
        head, _, rest = spec.request_id[len(REQUEST_ID_PREFIX) :].partition(":")
        flags, _, previous_run = head.partition(".")
        name, _, _key = rest.rpartition(":")
        if name:
            model = name
        background = "b" in flags
        store = "n" not in flags
        run_id = _expand_run_id(previous_run) if previous_run else None
        previous = ids.response_id(run_id) if run_id else None
    agents = list(spec.team.agents)
    suffixes = [
        a.system_prompt.partition(INSTRUCTIONS_MARKER)[2]
        for a in agents
        if INSTRUCTIONS_MARKER in a.system_prompt
    ]
    instructions = _common(suffixes) if len(suffixes) == len(agents) else None
    temps = [a.temperature for a in agents if a.HasField("temperature")]
    temperature = _common(temps) if len(temps) == len(agents) else None
    limits = [a.max_output_tokens for a in agents if a.HasField("max_output_tokens")]
    max_output = _common(limits) if len(limits) == len(agents) else None
    ends_itself = bool(spec.team.termination_text) or spec.team.kind in _ENDS_ITSELF
    return ResponseContext(
        model=model,
        background=background,
        instructions=instructions or None,
        temperature=temperature,
        max_output_tokens=max_output,
        conversation=run.conversation_id,
        ends_itself=ends_itself,
        store=store,
        previous_response_id=previous,
    )


def usage_json(usage: chat_pb2.Usage) -> dict[str, Any]:
    """OpenAI's Responses `usage` of a Chorus usage (input includes cached tokens)."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def chat_usage_json(usage: chat_pb2.Usage) -> dict[str, Any]:
    """OpenAI's Chat Completions `usage` of a Chorus usage."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def sse_frame(event: dict[str, Any]) -> bytes:
    """One SSE frame of an OpenAI streaming event (`event:` its type, `data:` the JSON)."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


@dataclass
class _Item:
    kind: str  # message | reasoning | function_call
    index: int
    data: dict[str, Any]
    text: str = ""


class ResponseMapper:
    """Turns one run's events, in seq order from seq 1, into OpenAI Responses events.

    Args:
        run_id: the run.
        context: what the response echoes (`context_of`).
        created_at: the run's create time, Unix seconds.

    `feed(event)` returns the OpenAI events of one run event, each with its
    `sequence_number` (0, 1, 2 … over the whole run). `response` is the Response object
    so far (status, output items, usage).
    """

    def __init__(
        self,
        run_id: str,
        context: ResponseContext,
        created_at: int,
        *,
        from_seq: int = 0,
    ) -> None:
        self.run_id = run_id
        self.context = context
        self.from_seq = from_seq
        """0: the run's first response; else the seq of the `input_received` that starts
        this response (events before it are not this response's)."""
        self.started = False
        """This response's first event was fed (`response.created` sent)."""
        self.next_sequence = 0
        self.ended = False
        self.waiting_input: run_pb2.RunEvent.InputRequested | None = None
        """The request this response ended at (the run waits for it), or None."""
        self.last_seq = 0
        self.output: list[dict[str, Any]] = []
        self.final_answer = ""
        self._open: dict[tuple[str, str], _Item] = {}
        self._last_text: dict[str, str] = {}
        self.response: dict[str, Any] = {
            "id": ids.response_id(run_id, from_seq),
            "object": "response",
            "created_at": created_at,
            "status": "queued" if context.background else "in_progress",
            "background": context.background,
            "completed_at": None,
            "error": None,
            "incomplete_details": None,
            "instructions": context.instructions,
            "max_output_tokens": context.max_output_tokens,
            "metadata": dict(context.metadata),
            "model": context.model,
            "output": self.output,
            "parallel_tool_calls": False,
            "previous_response_id": context.previous_response_id,
            "conversation": (
                {"id": ids.conversation_id(context.conversation)} if context.conversation else None
            ),
            "store": context.store,
            "temperature": context.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "truncation": "disabled",
            "usage": None,
            "user": None,
        }
        if from_seq:  # until an earlier answer names a later one: the run's first response
            self.response["previous_response_id"] = ids.response_id(run_id)

    # --- helpers ------------------------------------------------------------------------
    def _emit(self, out: list[dict[str, Any]], event: dict[str, Any]) -> None:
        event["sequence_number"] = self.next_sequence
        self.next_sequence += 1
        out.append(event)

    def _lifecycle(self, out: list[dict[str, Any]], kind: str) -> None:
        self._emit(out, {"type": kind, "response": orjson.loads(orjson.dumps(self.response))})

    def _add(self, out: list[dict[str, Any]], key: tuple[str, str], item: _Item) -> None:
        self.output.append(item.data)
        self._open[key] = item
        self._emit(
            out,
            {
                "type": "response.output_item.added",
                "output_index": item.index,
                "item": dict(item.data),
            },
        )

    def _open_message(self, out: list[dict[str, Any]], agent: str, seq: int) -> _Item:
        item = self._open.get(("message", agent))
        if item is not None:
            return item
        for key in [k for k in self._open if k[0] == "message"]:
            self._close(out, key)
        self._close(out, ("reasoning", agent))
        data = {
            "id": ids.item_id("msg", self.run_id, seq),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
            "agent": agent,
        }
        item = _Item("message", len(self.output), data)
        self._add(out, ("message", agent), item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._emit(
            out,
            {
                "type": "response.content_part.added",
                "item_id": data["id"],
                "output_index": item.index,
                "content_index": 0,
                "part": part,
            },
        )
        return item

    def _text(self, out: list[dict[str, Any]], item: _Item, delta: str) -> None:
        item.text += delta
        self._emit(
            out,
            {
                "type": "response.output_text.delta",
                "item_id": item.data["id"],
                "output_index": item.index,
                "content_index": 0,
                "delta": delta,
                "logprobs": [],
            },
        )

    def _close(
        self, out: list[dict[str, Any]], key: tuple[str, str], status: str = "completed"
    ) -> None:
        item = self._open.pop(key, None)
        if item is None:
            return
        data = item.data
        base = {"item_id": data["id"], "output_index": item.index}
        if item.kind == "message":
            part = {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
            self._emit(
                out,
                {
                    "type": "response.output_text.done",
                    **base,
                    "content_index": 0,
                    "text": item.text,
                    "logprobs": [],
                },
            )
            self._emit(
                out,
                {"type": "response.content_part.done", **base, "content_index": 0, "part": part},
            )
            data["content"] = [part]
            self._last_text[key[1]] = item.text
        elif item.kind == "reasoning":
            part = {"type": "summary_text", "text": item.text}
            self._emit(
                out,
                {
                    "type": "response.reasoning_summary_text.done",
                    **base,
                    "summary_index": 0,
                    "text": item.text,
                },
            )
            self._emit(
                out,
                {
                    "type": "response.reasoning_summary_part.done",
                    **base,
                    "summary_index": 0,
                    "part": part,
                },
            )
            data["summary"] = [part]
        data["status"] = status
        self._emit(
            out,
            {"type": "response.output_item.done", "output_index": item.index, "item": dict(data)},
        )

    def _close_all(self, out: list[dict[str, Any]], status: str = "completed") -> None:
        for key in list(self._open):
            self._close(out, key, status)

    # --- the mapping ----------------------------------------------------------------------
    def feed(self, event: run_pb2.RunEvent) -> list[dict[str, Any]]:
        """The OpenAI events of one run event (none for events OpenAI has no name for).
        Events at or below the last seq fed are ignored (a resume is exact anyway)."""
        out: list[dict[str, Any]] = []
        if self.ended or event.seq <= self.last_seq:
            return out
        self.last_seq = event.seq
        kind = event.WhichOneof("payload")
        agent = event.agent
        if self.from_seq:
            if event.seq < self.from_seq:  # an earlier response's: only its chain matters
                if kind == "input_received":
                    self.response["previous_response_id"] = ids.response_id(self.run_id, event.seq)
                return out
            if not self.started:
                self.started = True
                self.response["status"] = "in_progress"
                self._lifecycle(out, "response.created")
                self._lifecycle(out, "response.in_progress")
        if kind == "run_started":
            self.response["status"] = "in_progress"
            self._lifecycle(out, "response.created")
            self._lifecycle(out, "response.in_progress")
        elif kind == "text_delta":
            if event.text_delta.text:
                self._text(out, self._open_message(out, agent, event.seq), event.text_delta.text)
        elif kind == "reasoning_delta":
            self._reasoning(out, agent, event.seq, event.reasoning_delta.text)
        elif kind == "message_completed":
            self._message_completed(out, agent, event.seq, event.message_completed.message)
        elif kind == "tool_call_started":
            self._tool_started(out, agent, event.seq, event.tool_call_started.call)
        elif kind == "tool_call_finished":
            self._tool_finished(out, agent, event.seq, event.tool_call_finished)
        elif kind == "agent_finished":
            for key in [k for k in self._open if k[1] == agent]:
                self._close(out, key)
        elif kind == "run_resumed":
            self._close_all(out, "incomplete")
        elif kind == "input_requested":
            self._input_requested(out, event)
        elif kind == "run_completed":
            self._ended_completed(out, event)
        elif kind == "run_failed":
            self._close_all(out, "incomplete")
            error = event.run_failed.error
            code = "rate_limit_exceeded" if error.code == 8 else "server_error"
            self._end(out, "failed", event, "response.failed")
            self.response["error"] = {"code": code, "message": error.message or "the run failed"}
            out[-1]["response"]["error"] = self.response["error"]
        elif kind == "run_cancelled":
            self._close_all(out, "incomplete")
            self._end(out, "cancelled", event, "response.cancelled")
        return out

    def _input_requested(self, out: list[dict[str, Any]], event: run_pb2.RunEvent) -> None:
        """The run waits for a person: this response ends (`completed`) with the request as
        its last output item — an `mcp_approval_request` for an approval (the call's
        `function_call` item is done `incomplete`: it has not run), the prompt as the asking
        agent's message for a text request."""
        request = event.input_requested
        agent = request.agent or event.agent
        if request.kind == run_pb2.INPUT_KIND_APPROVAL:
            call = request.tool_call
            self._close(out, ("function_call", call.id), "incomplete")
            self._close_all(out)
            data = {
                "id": ids.approval_request_id(self.run_id, request.input_id),
                "type": "mcp_approval_request",
                "name": call.name,
                "arguments": call.arguments,
                "server_label": APPROVAL_SERVER_LABEL,
                "agent": agent,
            }
            index = len(self.output)
            self.output.append(data)
            self._emit(
                out, {"type": "response.output_item.added", "output_index": index, "item": data}
            )
            self._emit(
                out,
                {"type": "response.output_item.done", "output_index": index, "item": dict(data)},
            )
        else:
            self._close_all(out)
            key = ("message", agent)
            self._text(out, self._open_message(out, agent, event.seq), request.prompt)
            self._close(out, key)
        self.waiting_input = request
        self._end(out, "completed", event, "response.completed")

    def _reasoning(self, out: list[dict[str, Any]], agent: str, seq: int, text: str) -> None:
        item = self._open.get(("reasoning", agent))
        if item is None:
            data = {
                "id": ids.item_id("rs", self.run_id, seq),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "agent": agent,
            }
            item = _Item("reasoning", len(self.output), data)
            self._add(out, ("reasoning", agent), item)
            self._emit(
                out,
                {
                    "type": "response.reasoning_summary_part.added",
                    "item_id": data["id"],
                    "output_index": item.index,
                    "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                },
            )
        item.text += text
        self._emit(
            out,
            {
                "type": "response.reasoning_summary_text.delta",
                "item_id": item.data["id"],
                "output_index": item.index,
                "summary_index": 0,
                "delta": text,
            },
        )

    def _message_completed(
        self, out: list[dict[str, Any]], agent: str, seq: int, message: Any
    ) -> None:
        content: str = message.content
        key = ("message", agent)
        item = self._open.get(key)
        if item is not None:
            if content.startswith(item.text):
                if len(content) > len(item.text):
                    self._text(out, item, content[len(item.text) :])
                self._close(out, key)
                return
            self._close(out, key)  # the reply is not what was streamed: report it apart
        elif not content or self._last_text.get(agent) == content:
            return
        self._text(out, self._open_message(out, agent, seq), content)
        self._close(out, key)

    def _tool_started(
        self, out: list[dict[str, Any]], agent: str, seq: int, call: chat_pb2.ToolCall
    ) -> None:
        self._close(out, ("reasoning", agent))
        data = {
            "id": ids.item_id("fc", self.run_id, seq),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
            "agent": agent,
        }
        item = _Item("function_call", len(self.output), data)
        self._add(out, ("function_call", call.id), item)
        base = {"item_id": data["id"], "output_index": item.index}
        if call.arguments:
            self._emit(
                out,
                {"type": "response.function_call_arguments.delta", **base, "delta": call.arguments},
            )
        self._emit(
            out,
            {
                "type": "response.function_call_arguments.done",
                **base,
                "arguments": call.arguments,
                "name": call.name,
            },
        )
        data["arguments"] = call.arguments

    def _tool_finished(
        self, out: list[dict[str, Any]], agent: str, seq: int, finished: Any
    ) -> None:
        key = ("function_call", finished.call.id)
        if key not in self._open:
            self._tool_started(out, agent, seq, finished.call)
        self._open[key].data["output"] = finished.result
        self._close(out, key, "completed" if finished.success else "incomplete")

    def _ended_completed(self, out: list[dict[str, Any]], event: run_pb2.RunEvent) -> None:
        self._close_all(out)
        done = event.run_completed
        self.final_answer = done.final_answer
        self.response["usage"] = usage_json(done.usage)
        if done.stop_reason == "max_turns" and self.context.ends_itself:
            self.response["incomplete_details"] = {"reason": "max_messages"}
            self._end(out, "incomplete", event, "response.incomplete")
        else:
            self._end(out, "completed", event, "response.completed")

    def _end(
        self, out: list[dict[str, Any]], status: str, event: run_pb2.RunEvent, kind: str
    ) -> None:
        self.ended = True
        self.response["status"] = status
        self.response["completed_at"] = event.time.seconds if status == "completed" else None
        self._lifecycle(out, kind)

    def finish_from_run(self, run: run_pb2.Run) -> None:
        """Take the status and usage of the run record (a snapshot of a live run, or a run
        whose log could not be read to its end), and show the text of items still open."""
        for item in self._open.values():  # rebinding, never mutating: events keep theirs
            if item.kind == "message":
                item.data["content"] = [
                    {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
                ]
            elif item.kind == "reasoning":
                item.data["summary"] = [{"type": "summary_text", "text": item.text}]
        if not self.ended and run.status in _TERMINAL_STATUS:
            self.response["status"] = _TERMINAL_STATUS[run.status]
        if run.HasField("usage") and self.response["usage"] is None and self.ended:
            self.response["usage"] = usage_json(run.usage)
        if not self.final_answer:
            self.final_answer = run.final_answer


def output_text(response: dict[str, Any]) -> str:
    """The SDK's `Response.output_text`: the text of every message item, joined."""
    return "".join(
        part.get("text", "")
        for item in response["output"]
        if item.get("type") == "message"
        for part in item.get("content", [])
        if part.get("type") == "output_text"
    )


class ChatMapper:
    """Turns one run's events into `chat.completion.chunk`s: the transcript of the agents'
    messages, each introduced by its agent's name on its own line (`**Ada**`) unless the
    team has a single agent.

    Args:
        run_id, model, created: the chunk's `id` (`chatcmpl-<hex>`), `model` and `created`.
        named: introduce each agent's message by its name.
    """

    def __init__(self, run_id: str, model: str, created: int, *, named: bool) -> None:
        self.base = {
            "id": ids.chat_completion_id(run_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self.named = named
        self.speaker: str | None = None
        self.spoken = False
        self.content: list[str] = []
        self.usage: chat_pb2.Usage | None = None
        self.finish_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self.ended = False
        self._streamed: dict[str, str] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **self.base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _say(self, agent: str, text: str, out: list[dict[str, Any]]) -> None:
        piece = text
        if agent != self.speaker:
            if self.named:
                piece = ("\n\n" if self.spoken else "") + f"**{agent}**\n" + text
            elif self.spoken:
                piece = "\n\n" + text
            self.speaker = agent
        self.spoken = True
        self.content.append(piece)
        delta: dict[str, Any] = {"content": piece}
        if len(self.content) == 1:
            delta = {"role": "assistant", "content": piece}
        out.append(self._chunk(delta))

    def feed(self, event: run_pb2.RunEvent) -> list[dict[str, Any]]:
        """The chunks of one run event (the last one carries `finish_reason`)."""
        out: list[dict[str, Any]] = []
        if self.ended:
            return out
        kind = event.WhichOneof("payload")
        agent = event.agent
        if kind == "text_delta" and event.text_delta.text:
            self._streamed[agent] = self._streamed.get(agent, "") + event.text_delta.text
            self._say(agent, event.text_delta.text, out)
        elif kind == "message_completed":
            content = event.message_completed.message.content
            streamed = self._streamed.pop(agent, "")
            if content.startswith(streamed) and len(content) > len(streamed):
                self._say(agent, content[len(streamed) :], out)
            elif content and not streamed:
                self._say(agent, content, out)
        elif kind == "agent_finished":
            self._streamed.pop(agent, None)
        elif kind == "run_resumed":
            self._streamed.clear()
        elif kind == "run_completed":
            self.ended = True
            self.usage = event.run_completed.usage
            self.finish_reason = "stop"
            if not self.spoken:
                out.append(self._chunk({"role": "assistant", "content": ""}))
            out.append(self._chunk({}, "stop"))
        elif kind in ("run_failed", "run_cancelled"):
            self.ended = True
            if kind == "run_failed":
                error = event.run_failed.error
                message = error.message or "the run failed"
                code = "rate_limit_exceeded" if error.code == 8 else "server_error"
            else:
                reason = event.run_cancelled.cancellation.reason
                message = "the run was cancelled" + (f": {reason}" if reason else "")
                code = "cancelled"
            self.error = {"message": message, "type": "server_error", "param": None, "code": code}
        return out

    def completion(self) -> dict[str, Any]:
        """The non-streaming `chat.completion` of the whole run."""
        usage = chat_usage_json(self.usage) if self.usage is not None else None
        return {
            "id": self.base["id"],
            "object": "chat.completion",
            "created": self.base["created"],
            "model": self.base["model"],
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(self.content),
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": self.finish_reason or "stop",
                }
            ],
            "usage": usage,
        }

    def usage_chunk(self) -> dict[str, Any]:
        """The `stream_options.include_usage` chunk: no choices, the run's usage."""
        return {
            **self.base,
            "choices": [],
            "usage": chat_usage_json(self.usage or chat_pb2.Usage()),
        }
