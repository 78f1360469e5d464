"""Auth modes: each accepts the right credentials, rejects others with 401 (+ challenge),
and the identity reaches the services — users only see their own runs and conversations."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import websockets
from gateway_helpers import API_KEYS, detail, duet, error_of, read_events

from chorus.gateway.auth import hash_password

PASSWORD = "ann-correct-horse"


@pytest.fixture(scope="module")
def basic_gateway(gateways) -> str:
    return gateways.url(
        auth_mode="basic",
        basic_user="ann",
        basic_password_hash=hash_password(PASSWORD, rounds=4),
    )


@pytest.fixture(scope="module")
def easyauth_gateway(gateways) -> str:
    return gateways.url(auth_mode="easyauth", easyauth_enabled="true")


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_basic_accepts_the_right_password(basic_gateway):
    async with httpx.AsyncClient(base_url=basic_gateway, headers=_basic("ann", PASSWORD)) as c:
        assert (await c.get("/api/v1/user")).json() == {"user": "ann", "authenticatedBy": "basic"}
        assert (await c.get("/")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        _basic("ann", "wrong"),
        _basic("bob", PASSWORD),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": f"Bearer {API_KEYS['alice']}"},
    ],
)
async def test_basic_rejects_everything_else_with_a_challenge(basic_gateway, headers):
    async with httpx.AsyncClient(base_url=basic_gateway, headers=headers) as c:
        for path in ("/api/v1/user", "/"):
            reply = await c.get(path)
            assert reply.status_code == 401
            assert reply.headers["www-authenticate"] == 'Basic realm="chorus", charset="UTF-8"'
            assert error_of(reply)["status"] == "UNAUTHENTICATED"


async def test_apikey_accepts_each_users_key(alice, bob):
    assert (await alice.get("/api/v1/user")).json() == {
        "user": "alice",
        "authenticatedBy": "apikey",
    }
    assert (await bob.get("/api/v1/user")).json()["user"] == "bob"


async def test_apikey_missing_or_wrong_key_is_401_with_bearer_challenge(keyed_gateway):
    async with httpx.AsyncClient(base_url=keyed_gateway) as c:
        missing = await c.get("/api/v1/user")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="chorus"'
        assert detail(error_of(missing), "ErrorInfo")["reason"] == "MISSING_CREDENTIALS"
        wrong = await c.get("/api/v1/user", headers={"Authorization": "Bearer chorus_nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == 'Bearer realm="chorus", error="invalid_token"'
        assert detail(error_of(wrong), "ErrorInfo")["reason"] == "INVALID_CREDENTIALS"


async def test_health_metrics_and_page_need_no_credentials(keyed_gateway):
    async with httpx.AsyncClient(base_url=keyed_gateway) as c:
        for path in ("/health", "/health/ready", "/metrics", "/", "/static/app.js"):
            assert (await c.get(path)).status_code == 200, path


async def test_easyauth_trusts_the_proxy_headers(easyauth_gateway):
    async with httpx.AsyncClient(base_url=easyauth_gateway) as c:
        me = await c.get(
            "/api/v1/user",
            headers={
                "X-MS-CLIENT-PRINCIPAL-NAME": "dana@example.com",
                "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
            },
        )
        assert me.json() == {
            "user": "dana@example.com",
            "authenticatedBy": "easyauth",
            "provider": "aad",
        }
        anonymous = await c.get("/api/v1/user")
        assert anonymous.status_code == 401 and "www-authenticate" not in anonymous.headers
        system = await c.get("/api/v1/user", headers={"X-MS-CLIENT-PRINCIPAL-NAME": "system"})
        assert system.status_code == 403
        assert detail(error_of(system), "ErrorInfo")["reason"] == "RESERVED_USER"


async def test_runs_and_conversations_are_private_to_their_owner(alice, bob):
    created = await alice.post("/api/v1/runs", json=duet("Alice's secret"))
    run = created.json()
    assert run["owner"] == "alice"
    _, frames = await read_events(alice, "GET", f"/api/v1/runs/{run['id']}/events")
    assert frames[-1].event == "run_completed"

    assert (await bob.get(f"/api/v1/runs/{run['id']}")).status_code == 404
    assert (await bob.get(f"/api/v1/runs/{run['id']}/events")).status_code == 404
    assert (await bob.get(f"/api/v1/runs/{run['id']}/export")).status_code == 404
    assert (await bob.post(f"/api/v1/runs/{run['id']}/cancel")).status_code == 404
    bob_runs = (await bob.get("/api/v1/runs", params={"page_size": 1000})).json().get("runs", [])
    assert run["id"] not in [r["id"] for r in bob_runs]

    conversation = run["conversationId"]
    assert (await alice.get(f"/api/v1/conversations/{conversation}")).status_code == 200
    assert (await bob.get(f"/api/v1/conversations/{conversation}")).status_code == 404
    assert (await bob.get(f"/api/v1/conversations/{conversation}/messages")).status_code == 404
    assert (await bob.delete(f"/api/v1/conversations/{conversation}")).status_code == 404
    bob_list = (await bob.get("/api/v1/conversations", params={"page_size": 1000})).json()
    assert conversation not in [c["id"] for c in bob_list.get("conversations", [])]


async def test_websocket_authenticates_at_the_handshake(keyed_gateway):
    ws_url = keyed_gateway.replace("http", "ws") + "/api/v1/ws"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url):
            pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"] == 'Bearer realm="chorus"'
    assert json.loads(refused.value.response.body)["error"]["status"] == "UNAUTHENTICATED"
    headers = {"Authorization": f"Bearer {API_KEYS['alice']}"}
    async with websockets.connect(ws_url, additional_headers=headers) as ws:
        assert json.loads(await ws.recv()) == {"type": "status", "status": "connected"}
