"""The OpenAI-compatible API (`/v1`) driven by the official `openai` SDK, sync and async,
against the real services (simulator provider): Responses streamed, in the background,
resumed from a sequence number, cancelled, continued; Chat Completions streamed with the
usage chunk; models; errors raised as the SDK's exception classes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, get_args

import httpx
import openai
import pytest
from gateway_helpers import API_KEYS
from openai.types.responses import ResponseStreamEvent

from chorus.core.testing import wait_for

EVENT_TYPES = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in get_args(get_args(ResponseStreamEvent)[0])
}
DUET = "chorus/duet"
TWO_TURNS = {"chorus": {"max_turns": 2}}


def sync_client(base: str, key: str = "any-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def async_client(base: str, key: str = "any-key") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def _collect(stream: Any) -> list[Any]:
    return list(stream)


def _text_streams(seen: list[Any]) -> bool:
    return seen[-1].type == "response.output_text.delta"


def _background_duet(
    client: Any, text: str, until: Callable[[list[Any]], bool] = _text_streams
) -> tuple[Any, list[Any]]:
    """A background two-turn duet response on `text` and the events of its stream, read
    until `until(events so far)` (by default: until its text streams), then left."""
    created = client.responses.create(model=DUET, input=text, background=True, extra_body=TWO_TURNS)
    seen: list[Any] = []
    with client.responses.retrieve(created.id, stream=True) as stream:
        for event in stream:
            seen.append(event)
            if until(seen):
                break
    return created, seen


# --- models --------------------------------------------------------------------------------


def test_models_list_team_templates_and_the_simulator_model(gateway):
    client = sync_client(gateway)
    ids = [m.id for m in client.models.list()]
    assert {"chorus/duet", "chorus/assistant", "chorus/crypto-analysts"} <= set(ids)
    assert "simulator/sim-1" in ids
    model = client.models.retrieve("chorus/duet")
    assert model.id == "chorus/duet" and model.owned_by == "chorus"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("chorus/no-such-team")
    assert info.value.code == "model_not_found"


# --- Responses ------------------------------------------------------------------------------


def test_streamed_duet_response_reaches_completed_with_every_agents_text(gateway):
    client = sync_client(gateway)
    events = _collect(
        client.responses.create(
            model=DUET, input="Tabs or spaces?", stream=True, extra_body=TWO_TURNS
        )
    )
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for event in events:  # validated, not just constructed: the SDK's types are the judge
        EVENT_TYPES[event.type].model_validate(event.to_dict())
    final = events[-1].response
    assert final.status == "completed" and final.model == DUET
    messages = [item for item in final.output if item.type == "message"]
    agents = [item.model_extra["agent"] for item in messages]
    assert agents == ["Ada", "Blaise"]
    for item in messages:
        streamed = "".join(
            e.delta
            for e in events
            if e.type == "response.output_text.delta" and e.item_id == item.id
        )
        assert streamed and item.content[0].text == streamed
    assert final.output_text == "".join(m.content[0].text for m in messages)
    assert final.usage is not None and final.usage.output_tokens > 0
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens
    retrieved = client.responses.retrieve(final.id)
    assert retrieved.status == "completed"
    assert [i.id for i in retrieved.output] == [i.id for i in final.output]


def test_server_side_tool_calls_stream_as_function_call_items(gateway):
    client = sync_client(gateway)
    events = _collect(
        client.responses.create(
            model="chorus/assistant",
            input="What is 17.5% of 2,340, and what day is it?",
            stream=True,
        )
    )
    for event in events:
        EVENT_TYPES[event.type].model_validate(event.to_dict())
    final = events[-1].response
    calls = [item for item in final.output if item.type == "function_call"]
    assert {c.name for c in calls} == {"calculator", "current_time"}
    for call in calls:
        assert call.status == "completed" and call.model_extra["output"]
        assert call.model_extra["agent"] == "assistant"
        done = [
            e
            for e in events
            if e.type == "response.function_call_arguments.done" and e.item_id == call.id
        ]
        assert [d.arguments for d in done] == [call.arguments]
    assert final.output[-1].type == "message" and final.output_text


def test_background_response_resumes_exactly_after_a_sequence_number(gateway):
    client = sync_client(gateway)
    created = client.responses.create(
        model=DUET, input="Resume me", background=True, extra_body=TWO_TURNS
    )
    assert created.id.startswith("resp_") and created.background is True
    assert created.status in ("queued", "in_progress")
    full = _collect(client.responses.retrieve(created.id, stream=True))
    assert full[-1].type == "response.completed"
    n = len(full) // 2
    rest = _collect(client.responses.retrieve(created.id, stream=True, starting_after=n))
    assert [e.sequence_number for e in rest] == list(range(n + 1, len(full)))
    assert [e.to_dict() for e in rest] == [e.to_dict() for e in full[n + 1 :]]


def test_another_gateway_process_resumes_with_the_same_sequence_numbers(gateway, gateways):
    other = sync_client(gateways.url(sse_keepalive_s="14"))  # a second, separate process
    client = sync_client(gateway)
    created, first = _background_duet(client, "Two gateways", lambda seen: len(seen) == 6)
    rest = _collect(other.responses.retrieve(created.id, stream=True, starting_after=5))
    whole = _collect(client.responses.retrieve(created.id, stream=True))
    assert [e.to_dict() for e in first + rest] == [e.to_dict() for e in whole]
    assert whole[-1].type == "response.completed"


def test_a_live_response_resumed_mid_run_gives_the_same_events(slow_gateway):
    client = sync_client(slow_gateway)
    # the client disconnects mid-run
    created, first = _background_duet(
        client, "Slowly", lambda seen: _text_streams(seen) and len(seen) > 8
    )
    last = first[-1].sequence_number
    rest = _collect(client.responses.retrieve(created.id, stream=True, starting_after=last))
    assert rest[0].sequence_number == last + 1 and rest[-1].type == "response.completed"
    whole = _collect(client.responses.retrieve(created.id, stream=True))
    assert [e.to_dict() for e in first + rest] == [e.to_dict() for e in whole]


def test_starting_after_past_the_end_of_a_live_response_ends_with_an_error_event(slow_gateway):
    client = sync_client(slow_gateway)
    created = client.responses.create(
        model=DUET, input="Far", background=True, extra_body=TWO_TURNS
    )
    # live: the stream has started (200) when the end shows that nothing comes after 10**6
    beyond = _collect(client.responses.retrieve(created.id, stream=True, starting_after=10**6))
    assert [(e.type, e.param) for e in beyond] == [("error", "starting_after")]
    assert client.responses.retrieve(created.id).status == "completed"


def test_cancel_mid_run_ends_the_response_cancelled(slow_gateway):
    client = sync_client(slow_gateway)
    created, _ = _background_duet(client, "Cancel me")
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert all(item.status != "in_progress" for item in cancelled.output)
    tail = _collect(client.responses.retrieve(created.id, stream=True))
    assert tail[-1].type == "response.cancelled"
    # OpenAI defines no event for a cancelled stream: the SDK yields Chorus's
    # `response.cancelled` untyped, its response as a dict.
    assert tail[-1].response["status"] == "cancelled"
    again = client.responses.cancel(created.id)  # idempotent
    assert again.status == "cancelled"
    run_id = created.id.removeprefix("resp_")
    run = httpx.get(f"{slow_gateway}/api/v1/runs/{run_id}", timeout=30).json()
    assert run["status"] == "RUN_STATUS_CANCELLED"
    assert run["cancellation"]["reason"] == "cancelled over the OpenAI API"
    assert run["cancellation"]["requestedBy"] == "dev"


def test_non_streaming_create_waits_for_the_run_and_previous_response_id_continues(gateway):
    client = sync_client(gateway)
    first = client.responses.create(model="simulator/sim-1", input="My name is Ada.")
    assert first.status == "completed" and first.output_text
    assert first.conversation is not None
    second = client.responses.create(
        model="simulator/sim-1", input="What is my name?", previous_response_id=first.id
    )
    assert second.status == "completed"
    assert second.conversation.id == first.conversation.id
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(
            model="simulator/sim-1", input="?", previous_response_id="resp_" + "f" * 32
        )
    assert info.value.param == "previous_response_id"
    items = client.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == ["What is my name?"]


def test_input_messages_become_instructions_and_a_transcript(gateway):
    client = sync_client(gateway)
    response = client.responses.create(
        model="simulator/sim-1",
        input=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Bye"}]},
        ],
    )
    assert response.instructions == "Be terse."
    text = client.responses.input_items.list(response.id).data[0].content[0].text
    assert text == "Conversation so far:\nuser: Hi\nassistant: Hello\n\nuser: Bye"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model="simulator/sim-1", input=[{"role": "assistant", "content": "No user last"}]
        )
    assert info.value.param == "input"


def test_a_live_response_retrieved_shows_its_output_so_far(slow_gateway):
    client = sync_client(slow_gateway)
    created, _ = _background_duet(client, "Live")
    live = client.responses.retrieve(created.id)
    assert live.status == "in_progress"
    assert live.output and live.output[0].status == "in_progress"
    assert live.output[0].model_extra["agent"] == "Ada"
    assert live.output[0].content[0].text  # the text so far
    client.responses.cancel(created.id)


def test_instructions_temperature_and_max_output_tokens_are_echoed(gateway):
    client = sync_client(gateway)
    response = client.responses.create(
        model=DUET,
        input="Echo?",
        instructions="Answer in French.",
        temperature=0.4,
        max_output_tokens=64,
        extra_body=TWO_TURNS,
    )
    for got in (response, client.responses.retrieve(response.id)):
        assert got.instructions == "Answer in French."
        assert got.temperature == 0.4 and got.max_output_tokens == 64


def test_metadata_is_kept_on_the_conversation_and_merged_by_later_responses(gateway):
    client = sync_client(gateway)
    first = client.responses.create(
        model="simulator/sim-1", input="Hi", metadata={"ticket": "T-1", "team": "support"}
    )
    assert first.metadata == {"ticket": "T-1", "team": "support"}
    assert client.responses.retrieve(first.id).metadata == first.metadata
    second = client.responses.create(
        model="simulator/sim-1",
        input="Again",
        previous_response_id=first.id,
        metadata={"ticket": "T-2"},
        stream=True,
    )
    events = _collect(second)
    assert events[0].response.metadata == {"ticket": "T-2", "team": "support"}
    assert events[-1].response.conversation.id == first.conversation.id
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model="simulator/sim-1",
            input="Too many",
            previous_response_id=first.id,
            metadata={f"k{i}": "v" for i in range(15)},
        )
    assert info.value.param == "metadata"


async def test_async_client_and_the_stream_helper(gateway):
    client = async_client(gateway)
    async with client.responses.stream(model=DUET, input="Helper?", extra_body=TWO_TURNS) as stream:
        texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.status == "completed" and "".join(texts) == final.output_text
    events = [
        e
        async for e in await client.responses.create(
            model=DUET, input="Async", stream=True, extra_body=TWO_TURNS
        )
    ]
    assert events[-1].type == "response.completed"


# --- Chat Completions -----------------------------------------------------------------------


def test_chat_completion_stream_has_the_transcript_and_the_usage_chunk(gateway):
    client = sync_client(gateway)
    chunks = _collect(
        client.chat.completions.create(
            model=DUET,
            messages=[{"role": "user", "content": "Cats or dogs?"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body=TWO_TURNS,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("**Ada**\n") and "\n\n**Blaise**\n" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")


def test_chat_completion_without_stream_returns_one_message(gateway):
    client = sync_client(gateway)
    done = client.chat.completions.create(
        model="simulator/sim-1",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    )
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content
    assert not done.choices[0].message.content.startswith("**")  # one agent: no name line
    assert done.usage.total_tokens > 0


async def test_chat_client_disconnect_cancels_the_run(slow_gateway):
    client = async_client(slow_gateway)
    stream = await client.chat.completions.create(
        model=DUET,
        messages=[{"role": "user", "content": "Stop me"}],
        stream=True,
        extra_body=TWO_TURNS,
    )
    run_id = None
    async for chunk in stream:
        run_id = chunk.id.removeprefix("chatcmpl-")
        break
    await stream.close()
    assert run_id
    async with httpx.AsyncClient(base_url=slow_gateway, timeout=30) as http:

        async def cancelled() -> bool:
            run = (await http.get(f"/api/v1/runs/{run_id}")).json()
            return run["status"] == "RUN_STATUS_CANCELLED"

        await wait_for(cancelled, timeout=60, interval=0.1)


# --- errors and auth ------------------------------------------------------------------------


def test_errors_raise_the_sdks_exception_classes(gateway):
    client = sync_client(gateway)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="chorus/nope", input="x")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_00000000000000000000000000000000")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("not-an-id")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model=DUET,
            input="x",
            tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        )
    assert info.value.param == "tools" and "not supported" in info.value.message
    assert info.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=DUET,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    assert info.value.param == "tools"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=DUET, input="")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model=DUET, input=[{"type": "function_call_output", "call_id": "c", "output": "1"}]
        )


def test_delete_removes_the_response_and_a_second_delete_is_404(gateway):
    client = sync_client(gateway)
    created = client.responses.create(model=DUET, input="Delete me", extra_body=TWO_TURNS)
    assert client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_starting_after_out_of_range_and_negative_are_bad_requests(gateway):
    client = sync_client(gateway)
    done = client.responses.create(model=DUET, input="Range", extra_body=TWO_TURNS)
    last = _collect(client.responses.retrieve(done.id, stream=True))[-1].sequence_number
    for bad in (last, last + 100, -1):
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.retrieve(done.id, stream=True, starting_after=bad)
        assert info.value.param == "starting_after"


def test_apikey_mode_authenticates_bearer_keys_and_keeps_users_apart(keyed_gateway):
    with pytest.raises(openai.AuthenticationError) as info:
        sync_client(keyed_gateway, "wrong").models.list()
    assert info.value.code == "invalid_api_key"
    alice, bob = (sync_client(keyed_gateway, API_KEYS[u]) for u in ("alice", "bob"))
    created = alice.responses.create(
        model=DUET, input="Mine", background=True, extra_body=TWO_TURNS
    )
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(created.id)
    assert alice.responses.retrieve(created.id).id == created.id


def test_rate_limit_raises_rate_limit_error_with_retry_after(gateways):
    url = gateways.url(rate_limit_runs="1/minute")
    client = sync_client(url)
    client.responses.create(model=DUET, input="one", background=True, extra_body=TWO_TURNS)
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model=DUET, input="two", background=True, extra_body=TWO_TURNS)
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.code == "rate_limit_exceeded"


async def test_many_streams_at_once(gateway):
    client = async_client(gateway)

    async def one(i: int) -> str:
        stream = await client.responses.create(
            model=DUET, input=f"Topic {i}", stream=True, extra_body=TWO_TURNS
        )
        events = [e async for e in stream]
        return events[-1].type

    assert await asyncio.gather(*(one(i) for i in range(5))) == ["response.completed"] * 5
