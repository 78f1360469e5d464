"""The OpenAI-compatible API (`/v1`) with another client people point at OpenAI-compatible
servers (LangChain's `ChatOpenAI` with `base_url`), and with bad input sent as raw HTTP:
malformed bodies, oversized inputs, fuzzed fields — always OpenAI's error shape, never a 5xx."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_openai import ChatOpenAI

DUET = "chorus/duet"


def _openai_error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_langchain_chat_openai_streams_a_team(gateway):
    llm = ChatOpenAI(
        model=DUET,
        base_url=f"{gateway}/v1",
        api_key="any-key",
        max_retries=0,
        streaming=True,
        extra_body={"chorus": {"max_turns": 2}},
    )
    chunks = list(llm.stream("Should we write tests first?"))
    text = "".join(str(c.content) for c in chunks)
    assert len(chunks) > 3
    assert text.startswith("**Ada**\n") and "**Blaise**" in text
    whole = llm.invoke("And documentation?")
    assert "**Blaise**" in str(whole.content)


async def test_malformed_bodies_are_400_in_openai_shape(client):
    cases = [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "chorus/duet"}', "input"),
        (b'{"model": 5, "input": "x"}', "model"),
        (b'{"model": "chorus/duet", "input": "x", "temperature": 9}', "temperature"),
        (b'{"model": "chorus/duet", "input": "x", "metadata": {"k": 1}}', "metadata.k"),
        (
            b'{"model": "chorus/duet", "input": "x", "store": false, "background": true}',
            "background",
        ),
        (b'{"model": "chorus/duet", "input": "x", "chorus": {"max_turns": 0}}', "chorus.max_turns"),
        (
            b'{"model": "chorus/duet", "input": "x", "chorus": {"model_overrides": {"Zed": "simulator/sim-1"}}}',
            "chorus.model_overrides.Zed",
        ),
        (
            b'{"model": "chorus/duet", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}',
            "input[0].content[0]",
        ),
        (
            b'{"model": "chorus/duet", "input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}',
            "previous_response_id",
        ),
    ]
    for raw, param in cases:
        response = await client.post(
            "/v1/responses", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (raw, response.text)
        error = _openai_error(response)
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param, (raw, error)


async def test_ten_megabyte_input_is_refused_before_any_run(client):
    big = "x" * (10 * 1024 * 1024)
    response = await client.post("/v1/responses", json={"model": DUET, "input": big})
    assert response.status_code == 413
    error = _openai_error(response)
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    long_input = "y" * 70_000  # under the body limit, over the input limit
    response = await client.post(
        "/v1/chat/completions",
        json={"model": DUET, "messages": [{"role": "user", "content": long_input}]},
    )
    assert response.status_code == 400
    assert _openai_error(response)["code"] == "input_too_long"


async def test_unknown_routes_and_methods_answer_in_openai_shape(client):
    response = await client.get("/v1/no-such-thing")
    assert (
        response.status_code == 404 and _openai_error(response)["type"] == "invalid_request_error"
    )
    response = await client.put("/v1/responses")
    assert response.status_code == 405
    _openai_error(response)


async def test_keys_are_required_in_apikey_mode(keyed_gateway):
    async with httpx.AsyncClient(base_url=keyed_gateway, timeout=30) as http:
        response = await http.get("/v1/models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert _openai_error(response)["type"] == "authentication_error"


def test_every_v1_route_has_an_explicit_operation_id():
    from fastapi.openapi.utils import get_openapi

    from chorus.gateway.app import build_app
    from chorus.gateway.settings import GatewaySettings

    app = build_app(GatewaySettings(internal_token="t" * 40))
    paths = get_openapi(title="t", version="1", routes=app.routes)["paths"]
    ops = {
        f"{method} {path}": op.get("operationId")
        for path, item in paths.items()
        if path.startswith("/v1/")
        for method, op in item.items()
    }
    assert all(ops.values()), ops
    elsewhere = [
        op.get("operationId")
        for path, item in paths.items()
        if not path.startswith("/v1/")
        for op in item.values()
    ]
    assert not set(ops.values()) & set(elsewhere)  # unique across the whole API
    assert set(ops.values()) >= {
        "listOpenAIModels",
        "getOpenAIModel",
        "createResponse",
        "getResponse",
        "cancelResponse",
        "deleteResponse",
        "listResponseInputItems",
        "createChatCompletion",
    }


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([DUET, "simulator/sim-1", "x", "", "chorus/"]) | _json,
        "input": st.text(max_size=30) | _json,
        "messages": _json,
        "stream": _json,
        "background": st.just(True) | _json,
        "previous_response_id": st.text(max_size=40) | _json,
        "conversation": _json,
        "metadata": _json,
        "max_output_tokens": _json,
        "temperature": _json,
        "tools": _json,
        "chorus": _json,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_fields, path=st.sampled_from(["/v1/responses", "/v1/chat/completions"]))
def test_fuzzed_bodies_never_get_a_5xx(gateway, body, path):
    with httpx.Client(base_url=gateway, timeout=60) as http:
        response = http.post(path, json=body)
        if response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        ):
            return
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        _openai_error(response)


@pytest.mark.parametrize("query", ["starting_after=abc", "stream=maybe", "starting_after=1.5"])
async def test_fuzzed_queries_are_400(client, query):
    response = await client.get(f"/v1/responses/resp_{'0' * 32}?stream=true&{query}")
    assert response.status_code == 400, response.text
    _openai_error(response)
