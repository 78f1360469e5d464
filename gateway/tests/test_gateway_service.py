"""Models, teams, settings, user, health, readiness, metrics, docs, the page, request ids,
CORS and the error shape of everything else — against the real services."""

from __future__ import annotations

import re

import httpx
import pytest
from gateway_helpers import TOKEN, detail, error_of, metric

from chorus.core.testing import TcpProxy, free_port

ADDRESS = re.compile(r"ipv[46]:|127\.0\.0\.1|\[::1\]|:\d{4,5}\b")
"""What an internal address looks like in an error body (issue 23: never there)."""


async def test_models_lists_the_simulator_models(client):
    reply = await client.get("/api/v1/models")
    assert reply.status_code == 200
    refs = {(m["ref"]["provider"], m["ref"]["model"]) for m in reply.json()["models"]}
    assert ("simulator", "sim-1") in refs
    only = (await client.get("/api/v1/models", params={"provider": "simulator"})).json()["models"]
    assert {m["ref"]["provider"] for m in only} == {"simulator"}


async def test_teams_lists_the_built_in_templates(client):
    reply = await client.get("/api/v1/teams")
    names = {t["name"] for t in reply.json()["templates"]}
    assert {"duet", "assistant", "crypto-analysts", "article-pipeline"} <= names
    duet = next(t for t in reply.json()["templates"] if t["name"] == "duet")
    assert duet["spec"]["kind"] == "TEAM_KIND_ROUND_ROBIN" and duet["exampleInput"]


async def test_settings_are_flags_and_limits_never_secrets(client):
    reply = await client.get("/api/v1/settings")
    body = reply.json()
    assert body["authMode"] == "none"
    assert body["limits"]["maxInputChars"] == 65536
    assert body["rateLimits"]["runs"].startswith("1000 per 1 minute")
    text = reply.text.lower()
    assert TOKEN.lower() not in text
    assert not re.search(r"token|hash|password|secret|127\.0\.0\.1", text.replace("tokens", ""))


async def test_user_says_who_and_how(client):
    assert (await client.get("/api/v1/user")).json() == {"user": "dev", "authenticatedBy": "none"}


async def test_health_and_readiness(client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    services = ready.json()["services"]
    assert set(services) == {"orchestrator", "history", "provider"}
    assert {s["status"] for s in services.values()} == {"SERVING"}
    assert "127.0.0.1" not in ready.text, "service addresses are internal"


@pytest.mark.parametrize(
    ("path", "like"),
    [
        ("/health/live", "/health"),
        ("/api/v1/health", "/health"),
        ("/api/v1/health/ready", "/health/ready"),
    ],
)
async def test_health_paths_of_the_designs_answer_like_ours(keyed_gateway, path, like):
    """The MagenticOne design's `/api/v1/health[/ready]` and `/health/live` (issue 23):
    the same answers, and like ours without credentials."""
    async with httpx.AsyncClient(base_url=keyed_gateway, timeout=30) as anonymous:
        reply, reference = await anonymous.get(path), await anonymous.get(like)
    assert reply.status_code == reference.status_code == 200
    assert reply.json() == reference.json()
    assert reply.headers["content-type"] == "application/json"


async def test_readiness_is_503_naming_the_service_that_is_down(gateways, backend):
    host, port = backend.history.rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    try:
        url = gateways.url(
            history_address=proxy.address,
            provider_address=f"127.0.0.1:{free_port()}",
            readiness_timeout_s="0.5",
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            proxy.cut()
            reply = await client.get("/health/ready")
            assert reply.status_code == 503
            error = error_of(reply)
            assert error["status"] == "UNAVAILABLE"
            states = detail(error, "ErrorInfo")["metadata"]
            assert states["orchestrator"] == "SERVING"
            assert states["provider"] != "SERVING" and states["history"] != "SERVING"
            assert not ADDRESS.search(reply.text), f"an internal address in {reply.text}"
            for path in ("/api/v1/health/ready",):
                assert (await client.get(path)).json() == reply.json()
            proxy.restore()
            models = await client.get("/api/v1/models")
            assert models.status_code == 503, "a dead backend is UNAVAILABLE, mapped to 503"
            error = error_of(models)
            assert error["status"] == "UNAVAILABLE"
            assert "provider" in error["message"], "says which service is unavailable"
            assert detail(error, "ErrorInfo")["metadata"]["service"] == "provider"
            assert not ADDRESS.search(models.text), f"an internal address in {models.text}"
    finally:
        proxy.close()


async def test_metrics_use_route_templates(client):
    await client.get("/api/v1/runs/00000000-0000-4000-8000-0000000000aa")
    text = (await client.get("/metrics")).text
    assert metric(text, "http_requests_total", route="/api/v1/runs/{run_id}", code="404") >= 1
    assert "00000000-0000-4000-8000-0000000000aa" not in text
    assert "chorus_gateway_sse_streams" in text and "chorus_gateway_ws_connections" in text


async def test_metrics_label_openai_routes_with_their_full_template(client):
    """The OpenAI-compatible routes' label keeps the `/v1` prefix (FastAPI reports an
    included router's route without its prefixes)."""
    unknown = "resp_" + "0" * 31 + "b"
    assert (await client.get(f"/v1/responses/{unknown}")).status_code == 404
    assert (await client.post(f"/v1/responses/{unknown}/cancel")).status_code == 404
    assert (await client.get("/v1/models/simulator/sim-1")).status_code == 200
    assert (await client.get("/api/v1/conversations/not-a-uuid")).status_code in (400, 404)
    assert (await client.get("/v1/no/such/route")).status_code == 404
    text = (await client.get("/metrics")).text
    for method, route, code in (
        ("GET", "/v1/responses/{response_id}", "404"),
        ("POST", "/v1/responses/{response_id}/cancel", "404"),
        ("GET", "/v1/models/{model_id:path}", "200"),
        ("GET", "/metrics", "200"),
    ):
        assert metric(text, "http_requests_total", method=method, route=route, code=code) >= 1
    assert metric(text, "http_requests_total", route="/api/v1/conversations/{conversation_id}")
    assert metric(text, "http_requests_total", route="unmatched", code="404") >= 1
    for bare in ("/responses/{response_id}", "/models/{model_id:path}", "/runs/{run_id}"):
        assert metric(text, "http_requests_total", route=bare) == 0, bare
    assert unknown not in text


async def test_openapi_describes_the_proto_bodies(client):
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = (await client.get("/openapi.json")).json()
    assert "/api/v1/runs/{run_id}/events" in schema["paths"]
    spec = schema["components"]["schemas"]["chorus.v1.RunSpec"]
    assert spec["properties"]["maxTurns"] == {"type": "integer", "format": "int32"}
    assert spec["properties"]["onDisconnect"]["enum"][0] == "ON_DISCONNECT_UNSPECIFIED"
    run = schema["components"]["schemas"]["chorus.v1.Run"]
    assert run["properties"]["lastSeq"] == {"type": "string", "format": "int64"}
    body = schema["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/chorus.v1.RunSpec"}


async def test_unknown_routes_and_methods_are_aip_errors(client):
    nowhere = await client.get("/api/v1/nowhere")
    assert nowhere.status_code == 404 and error_of(nowhere)["status"] == "NOT_FOUND"
    wrong = await client.delete("/api/v1/teams")
    assert wrong.status_code == 405 and error_of(wrong)["status"] == "UNIMPLEMENTED"


async def test_request_id_is_echoed_and_reaches_the_services(client):
    reply = await client.get(
        "/api/v1/runs/00000000-0000-4000-8000-0000000000ab", headers={"X-Request-ID": "trace-42"}
    )
    assert reply.headers["x-request-id"] == "trace-42"
    assert detail(error_of(reply), "ErrorInfo")["metadata"]["request_id"] == "trace-42"
    generated = await client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])


async def test_cors_allows_only_the_configured_origins(gateways):
    url = gateways.url(cors_origins='["https://app.example"]')
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        allowed = await client.options(
            "/api/v1/runs",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused = await client.options(
            "/api/v1/runs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in refused.headers
        simple = await client.get("/api/v1/user", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "Retry-After" in simple.headers["access-control-expose-headers"]


async def test_page_and_assets_are_served_without_external_resources(client):
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    texts = [page.text]
    for asset in ("/static/app.js", "/static/style.css"):
        reply = await client.get(asset)
        assert reply.status_code == 200
        texts.append(reply.text)
    for text in texts:
        assert not re.search(r"(src|href)=\"https?://", text)
        assert "innerHTML" not in text, "model output is rendered with textContent only"
