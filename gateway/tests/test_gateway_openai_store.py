"""`store: false` and the echoed `previous_response_id` of the OpenAI-compatible Responses
API (`/v1`), driven by the official `openai` SDK against the real services (simulator
provider): a `store: false` response is not kept once it ended — streamed, blocking, or
left by its client mid-run — and `previous_response_id` is echoed by create, stream events
and retrieve, on any gateway process (it is read back from the run record)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from chorus.core.testing import wait_for
from chorus.gateway.openai_api import ids, mapping
from chorus.v1 import run_pb2

DUET = "chorus/duet"
TWO_TURNS = {"chorus": {"max_turns": 2}}
RUN_ID = "0b7d6a2e-1f0c-4c55-9a51-3f1b2c4d5e6f"


def sync_client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="any-key", max_retries=0, timeout=60)


def async_client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="any-key", max_retries=0, timeout=60)


def _api(base: str, path: str) -> int:
    return httpx.get(f"{base}/api/v1/{path}", timeout=30).status_code


def _conversation(response: Any) -> str:
    found = ids.conversation_of(response.conversation.id)
    assert found is not None
    return found


# --- store: false ---------------------------------------------------------------------------


def test_a_blocking_store_false_response_is_answered_then_gone_with_its_conversation(gateway):
    client = sync_client(gateway)
    response = client.responses.create(
        model=DUET, input="Forget me", store=False, metadata={"k": "v"}, extra_body=TWO_TURNS
    )
    assert response.status == "completed" and response.store is False
    assert "Ada" in {item.agent for item in response.output}  # type: ignore[attr-defined]
    assert response.output_text and response.metadata == {"k": "v"}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id, stream=True)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)
    run_id = response.id.removeprefix("resp_")
    assert _api(gateway, f"runs/{run_id}") == 404
    # it started its conversation, so that goes too (nothing of the request is kept)
    assert _api(gateway, f"conversations/{_conversation(response)}") == 404


def test_a_streamed_store_false_response_is_gone_once_its_last_event_arrived(gateway):
    client = sync_client(gateway)
    events = list(
        client.responses.create(
            model=DUET, input="Stream and forget", store=False, stream=True, extra_body=TWO_TURNS
        )
    )
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[0].response.store is False and events[-1].response.store is False
    assert any(e.type == "response.output_text.delta" for e in events)
    response_id = events[-1].response.id
    # deleted before the terminal event was sent: no wait needed
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)
    assert _api(gateway, f"conversations/{_conversation(events[-1].response)}") == 404


def test_store_false_continuing_a_stored_response_keeps_the_conversation(gateway):
    client = sync_client(gateway)
    first = client.responses.create(model="simulator/sim-1", input="My name is Ada.")
    second = client.responses.create(
        model="simulator/sim-1",
        input="What is my name?",
        previous_response_id=first.id,
        store=False,
    )
    assert second.status == "completed" and second.store is False
    assert second.previous_response_id == first.id
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    assert client.responses.retrieve(first.id).status == "completed"  # untouched
    assert _api(gateway, f"conversations/{_conversation(first)}") == 200
    # a stored response can continue from the same earlier one
    third = client.responses.create(
        model="simulator/sim-1", input="Again?", previous_response_id=first.id
    )
    assert third.store is True and client.responses.retrieve(third.id).store is True


async def test_a_store_false_stream_left_mid_run_is_cancelled_and_deleted(slow_gateway):
    client = async_client(slow_gateway)
    stream = await client.responses.create(
        model=DUET, input="Leave early", store=False, stream=True, extra_body=TWO_TURNS
    )
    response_id = ""
    async for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            break
    await stream.close()  # the client leaves mid-run
    assert response_id

    async def gone() -> bool:
        try:
            await client.responses.retrieve(response_id)
        except openai.NotFoundError:
            return True
        return False

    assert await wait_for(gone, timeout=60, interval=0.2)
    run_id = response_id.removeprefix("resp_")
    assert _api(slow_gateway, f"runs/{run_id}") == 404


def test_background_with_store_false_is_a_bad_request(gateway):
    client = sync_client(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=DUET, input="x", background=True, store=False)
    assert info.value.param == "background"
    assert "requires store" in info.value.message
    explicit = client.responses.create(
        model=DUET, input="Kept", store=True, background=True, extra_body=TWO_TURNS
    )
    assert explicit.store is True
    assert client.responses.retrieve(explicit.id).store is True


# --- previous_response_id echoed ------------------------------------------------------------


def test_previous_response_id_is_echoed_by_create_stream_and_retrieve(gateway, gateways):
    client = sync_client(gateway)
    first = client.responses.create(model="simulator/sim-1", input="Hello")
    assert first.previous_response_id is None
    blocking = client.responses.create(
        model="simulator/sim-1", input="Go on", previous_response_id=first.id
    )
    assert blocking.previous_response_id == first.id
    events = list(
        client.responses.create(
            model="simulator/sim-1", input="And on", previous_response_id=blocking.id, stream=True
        )
    )
    lifecycle = [e for e in events if hasattr(e, "response")]
    assert lifecycle and all(e.response.previous_response_id == blocking.id for e in lifecycle)
    streamed = lifecycle[-1].response.id
    background = client.responses.create(
        model=DUET,
        input="Later",
        previous_response_id=streamed,
        background=True,
        extra_body=TWO_TURNS,
    )
    assert background.previous_response_id == streamed
    # read back from the run record: the same from another gateway process
    other = sync_client(gateways.url(sse_keepalive_s="14"))
    for client_ in (client, other):
        assert client_.responses.retrieve(blocking.id).previous_response_id == first.id
        assert client_.responses.retrieve(streamed).previous_response_id == blocking.id
        replay = list(client_.responses.retrieve(background.id, stream=True))
        assert replay[-1].type == "response.completed"
        assert replay[0].response.previous_response_id == streamed
        assert replay[-1].response.previous_response_id == streamed
        assert client_.responses.retrieve(first.id).previous_response_id is None
    assert client.responses.cancel(background.id).previous_response_id == streamed


# --- the request_id that carries them -------------------------------------------------------


def _context(request_id: str) -> mapping.ResponseContext:
    return mapping.context_of(
        run_pb2.Run(id=RUN_ID, spec=run_pb2.RunSpec(template="duet", request_id=request_id))
    )


def test_request_id_carries_store_and_the_previous_response():
    previous = "5e0f7c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
    rid = mapping.request_id(
        "chorus/duet", "k" * 22, background=False, store=False, previous_run=previous
    )
    assert len(rid) <= mapping.MAX_REQUEST_ID_CHARS
    context = _context(rid)
    assert context.model == "chorus/duet" and context.background is False
    assert context.store is False
    assert context.previous_response_id == ids.response_id(previous)
    plain = _context(mapping.request_id("openai/gpt-4o-mini", "k" * 22, background=True))
    assert plain.store is True and plain.previous_response_id is None and plain.background
    # records written before these flags existed read as before
    old = _context("oai:b:chorus/duet:" + "k" * 22)
    assert old.background and old.store and old.previous_response_id is None
    # a garbled previous part is ignored, never an error
    assert _context("oai:-.!!:chorus/duet:" + "k" * 22).previous_response_id is None
    # a model id too long to leave room: the previous response is left out, still <= 128
    long_model = "p/" + "m" * 94
    too_long = mapping.request_id(long_model, "k" * 22, background=True, previous_run=previous)
    assert len(too_long) <= mapping.MAX_REQUEST_ID_CHARS
    assert _context(too_long).model == long_model
    assert _context(too_long).previous_response_id is None
