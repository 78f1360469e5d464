"""Conversations and chatting with the assistant, against the real services."""

from __future__ import annotations

from gateway_helpers import detail, error_of, read_events

MISSING = "00000000-0000-4000-8000-00000000000c"


async def _conversation(client, **fields) -> dict:
    created = await client.post("/api/v1/conversations", json=fields)
    assert created.status_code == 201, created.text
    return created.json()


async def test_create_get_list_conversations(client):
    created = await client.post(
        "/api/v1/conversations", json={"title": "Plans", "metadata": {"k": "v"}}
    )
    assert created.status_code == 201
    conversation = created.json()
    assert created.headers["location"] == f"/api/v1/conversations/{conversation['id']}"
    assert conversation["title"] == "Plans" and conversation["owner"] == "dev"
    fetched = (await client.get(created.headers["location"])).json()
    assert fetched["id"] == conversation["id"] and fetched["metadata"] == {"k": "v"}
    listed = (await client.get("/api/v1/conversations", params={"page_size": 1000})).json()
    assert conversation["id"] in [c["id"] for c in listed["conversations"]]


async def test_create_with_empty_body_and_request_id_is_idempotent(client):
    first = await client.post("/api/v1/conversations?request_id=gw-conv-1")
    second = await client.post("/api/v1/conversations?request_id=gw-conv-1")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]


async def test_patch_changes_only_the_fields_in_the_body(client):
    conversation = await _conversation(client, title="Old", team="duet")
    patched = await client.patch(
        f"/api/v1/conversations/{conversation['id']}", json={"title": "New"}
    )
    assert patched.status_code == 200
    assert patched.json()["title"] == "New" and patched.json()["team"] == "duet"
    masked = await client.patch(
        f"/api/v1/conversations/{conversation['id']}?update_mask=team", json={"title": "Ignored"}
    )
    assert masked.json()["title"] == "New" and "team" not in masked.json()


async def test_patch_errors(client):
    conversation = await _conversation(client, title="x")
    owner = await client.patch(f"/api/v1/conversations/{conversation['id']}", json={"owner": "eve"})
    assert owner.status_code == 400
    assert detail(error_of(owner), "BadRequest")["fieldViolations"][0]["field"] == "owner"
    nothing = await client.patch(f"/api/v1/conversations/{conversation['id']}", json={})
    assert nothing.status_code == 400
    missing = await client.patch(f"/api/v1/conversations/{MISSING}", json={"title": "x"})
    assert missing.status_code == 404


async def test_delete_then_get_is_404(client):
    conversation = await _conversation(client, title="Doomed")
    deleted = await client.delete(f"/api/v1/conversations/{conversation['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    gone = await client.get(f"/api/v1/conversations/{conversation['id']}")
    assert gone.status_code == 404 and error_of(gone)["status"] == "NOT_FOUND"
    again = await client.delete(f"/api/v1/conversations/{conversation['id']}")
    assert again.status_code == 404


async def test_message_gets_the_assistants_reply_as_json(client):
    conversation = await _conversation(client)
    reply = await client.post(
        f"/api/v1/conversations/{conversation['id']}/messages",
        json={"content": "What is 2 + 2?"},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["userMessage"]["content"] == "What is 2 + 2?"
    assert body["userMessage"]["role"] == "ROLE_USER"
    assert body["assistantMessage"]["role"] == "ROLE_ASSISTANT"
    assert body["assistantMessage"]["content"] or body["assistantMessage"].get("toolCalls")
    assert body["run"]["status"] == "RUN_STATUS_COMPLETED"
    assert body["run"]["conversationId"] == conversation["id"]
    assert body["conversation"]["title"] == "What is 2 + 2?"
    listed = await client.get(f"/api/v1/conversations/{conversation['id']}/messages")
    ids = [m["id"] for m in listed.json()["messages"]]
    assert body["userMessage"]["id"] in ids and body["assistantMessage"]["id"] in ids


async def test_second_message_keeps_the_title_and_sees_the_history(client):
    conversation = await _conversation(client, title="Kept")
    for text in ("First question", "Second question"):
        reply = await client.post(
            f"/api/v1/conversations/{conversation['id']}/messages", json={"content": text}
        )
        assert reply.status_code == 200, reply.text
    assert reply.json()["conversation"]["title"] == "Kept"
    messages = (await client.get(f"/api/v1/conversations/{conversation['id']}/messages")).json()
    users = [m["content"] for m in messages["messages"] if m["role"] == "ROLE_USER"]
    assert users == ["First question", "Second question"]
    run_id = reply.json()["run"]["id"]
    only_run = await client.get(
        f"/api/v1/conversations/{conversation['id']}/messages", params={"run_id": run_id}
    )
    assert {m["runId"] for m in only_run.json()["messages"]} == {run_id}


async def test_message_streams_as_sse_when_asked(client):
    conversation = await _conversation(client)
    response, frames = await read_events(
        client,
        "POST",
        f"/api/v1/conversations/{conversation['id']}/messages",
        json_body={"content": "Stream your answer"},
    )
    assert response.status_code == 200
    assert frames[0].event == "run_started" and frames[-1].event == "run_completed"
    assert any(f.event == "text_delta" for f in frames)
    titled = (await client.get(f"/api/v1/conversations/{conversation['id']}")).json()
    assert titled["title"] == "Stream your answer"


async def test_conversation_model_is_the_assistants_model(client):
    conversation = await _conversation(client, model={"provider": "simulator", "model": "sim-fast"})
    reply = await client.post(
        f"/api/v1/conversations/{conversation['id']}/messages", json={"content": "Hi"}
    )
    assert reply.status_code == 200, reply.text
    overrides = reply.json()["run"]["spec"]["modelOverrides"]
    assert list(overrides.values()) == [{"provider": "simulator", "model": "sim-fast"}]


async def test_message_errors(client):
    missing = await client.post(f"/api/v1/conversations/{MISSING}/messages", json={"content": "x"})
    assert missing.status_code == 404
    conversation = await _conversation(client)
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    empty = await client.post(url, json={"content": "  "})
    assert empty.status_code == 400
    assert detail(error_of(empty), "BadRequest")["fieldViolations"][0]["field"] == "content"
    too_long = await client.post(url, json={"content": "y" * 70000})
    assert too_long.status_code == 400
    as_bot = await client.post(url, json={"content": "x", "role": "ROLE_ASSISTANT"})
    assert as_bot.status_code == 400


async def test_messages_of_an_unknown_conversation_are_404(client):
    reply = await client.get(f"/api/v1/conversations/{MISSING}/messages")
    assert reply.status_code == 404
    bad_page = await client.get(
        f"/api/v1/conversations/{MISSING}/messages", params={"page_size": -1}
    )
    assert bad_page.status_code == 400
