"""`/openapi.json` is a document a client generator can use (issue 23, item 14): operationIds
that make method names, SSE documented as `text/event-stream` with the event schema, 400
AIP-193 errors (never FastAPI's 422), an example on every request body, camelCase query
parameters (snake_case accepted; an unknown or malformed one is a 400) — and a client
generated from it by openapi-python-client starts and reads a run."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import detail, error_of

ERROR_REF = {"$ref": "#/components/schemas/Error"}
RUN_EVENT_REF = {"$ref": "#/components/schemas/chorus.v1.RunEvent"}


@pytest.fixture(scope="module")
def schema(gateway: str) -> dict[str, Any]:
    reply = httpx.get(f"{gateway}/openapi.json", timeout=30)
    assert reply.status_code == 200
    document: dict[str, Any] = reply.json()
    return document


def _operations(schema: dict[str, Any], prefix: str = "/api/v1/") -> list[tuple[str, str, dict]]:
    return [
        (method, path, op)
        for path, item in schema["paths"].items()
        if path.startswith(prefix)
        for method, op in item.items()
    ]


def test_operation_ids_are_method_names(schema):
    ids = [op["operationId"] for _, _, op in _operations(schema, "/")]
    assert len(ids) == len(set(ids)), "operationIds are unique"
    api = {f"{m.upper()} {p}": op["operationId"] for m, p, op in _operations(schema)}
    assert all(re.fullmatch(r"[a-z][A-Za-z]+", i) for i in api.values()), api
    assert api["POST /api/v1/runs"] == "createRun"
    assert api["GET /api/v1/runs"] == "listRuns"
    assert api["GET /api/v1/runs/{run_id}/events"] == "streamRunEvents"
    assert api["POST /api/v1/runs/stream"] == "streamRun"
    assert api["PATCH /api/v1/runs/{run_id}/agents/{agent_name}"] == "updateRunAgent"
    assert api["POST /api/v1/conversations/{conversation_id}/messages"] == "sendMessage"


def test_errors_are_aip_193_400s_never_fastapi_422(schema):
    assert '"422"' not in str(schema).replace("'", '"')
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    for method, path, op in _operations(schema):
        if "health" in op.get("tags", ()):
            continue
        bad = op["responses"]["400"]
        assert bad["content"] == {"application/json": {"schema": ERROR_REF}}, (method, path)
        assert op["responses"]["4XX"]["content"]["application/json"]["schema"] == ERROR_REF


def test_every_request_body_has_an_example(schema):
    bodies = [(m, p, op["requestBody"]) for m, p, op in _operations(schema) if "requestBody" in op]
    assert len(bodies) >= 7
    for method, path, body in bodies:
        for media in body["content"].values():
            assert media.get("example"), (method, path)


PROTO = Path(__file__).resolve().parents[2] / "proto" / "chorus" / "v1"


def _proto_comments() -> dict[str, str]:
    """The leading comment of every message and field in proto/chorus/v1, by full name
    (`chorus.v1.Run.owner_instance`), its lines joined with spaces."""
    comments: dict[str, str] = {}
    for path in sorted(PROTO.glob("*.proto")):
        scope: list[str | None] = []  # message / enum names; None for a oneof
        lines: list[str] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            names = [n for n in scope if n is not None]
            if comment := re.match(r"//\s?(.*)", line):
                lines.append(comment[1])
                continue
            if block := re.match(r"(message|enum)\s+(\w+)\s*\{", line):
                comments[".".join(["chorus.v1", *names, block[2]])] = " ".join(lines)
                scope.append(block[2])
            elif re.match(r"oneof\s+\w+\s*\{", line):
                scope.append(None)
            elif line.startswith("}") and scope:
                scope.pop()
            elif field := re.match(
                r"(?:optional |repeated )?[\w.]+(?:<[\w., ]+>)?\s+(\w+)\s*=", line
            ):
                comments[".".join(["chorus.v1", *names, field[1]])] = " ".join(lines)
            lines = []
    return comments


def _described(schema: dict[str, Any], name: str) -> str:
    """The OpenAPI description of the proto message or field `name`."""
    components = schema["components"]["schemas"]
    if name in components:
        return str(components[name].get("description", ""))
    message, field = name.rsplit(".", 1)
    (prop,) = [
        p
        for p in components[message]["properties"]
        if re.sub(r"([A-Z])", r"_\1", p).lower() == field
    ]
    return str(components[message]["properties"][prop].get("description", ""))


def test_replica_internals_and_testing_controls_are_marked(schema):
    """Issue 24 item 6: the public schema says which fields clients need not read (replica
    internals) and which only the simulator honours (testing controls), as the proto
    comments do (docs/architecture.md §3)."""
    replica = "Replica internals: clients need not read it."
    testing = "Testing control: only the simulator provider honours it."
    for field in ("owner_instance", "heartbeat_time", "lease_epoch", "attempt"):
        assert _described(schema, f"chorus.v1.Run.{field}").startswith(replica), field
    for name in (
        "chorus.v1.SimulatorOptions",
        "chorus.v1.SimulatorFault",
        "chorus.v1.AgentSpec.simulator",
    ):
        assert _described(schema, name).startswith(testing), name
    run = schema["components"]["schemas"]["chorus.v1.Run"]["properties"]
    assert "description" not in run["id"] and "description" not in run["status"]

    # every element the proto comments mark is marked in the document too (those of the
    # internal services' messages, absent from the document, aside)
    marked = {
        name
        for name, text in _proto_comments().items()
        if re.search(r"replica internals|testing control", text, re.I)
    }
    assert {
        "chorus.v1.Run.owner_instance",
        "chorus.v1.Run.heartbeat_time",
        "chorus.v1.Run.lease_epoch",
        "chorus.v1.SimulatorOptions",
    } <= marked, marked
    components = schema["components"]["schemas"]
    for name in marked:
        if name in components or name.rsplit(".", 1)[0] in components:
            assert _described(schema, name).startswith((replica, testing)), name


def test_sse_operations_are_event_streams_with_the_event_schema(schema):
    for path, method in (("/api/v1/runs/stream", "post"), ("/api/v1/runs/{run_id}/events", "get")):
        content = schema["paths"][path][method]["responses"]["200"]["content"]
        assert set(content) == {"text/event-stream"}, (path, content)
        item = content["text/event-stream"]["itemSchema"]
        assert RUN_EVENT_REF in item["properties"]["data"]["contentSchema"]["anyOf"]
        assert {"text_delta", "tool_call_started", "run_completed"} <= set(
            item["properties"]["event"]["enum"]
        )
    chat = schema["paths"]["/api/v1/conversations/{conversation_id}/messages"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "chorus.v1.RunEvent" in schema["components"]["schemas"]


def test_query_parameters_are_named_like_body_fields(schema):
    names = {
        p["name"]
        for _, _, op in _operations(schema)
        for p in op.get("parameters", ())
        if p["in"] == "query"
    }
    assert {"pageSize", "pageToken", "afterSeq", "updateMask", "conversationId"} <= names
    assert not [n for n in names if "_" in n], names


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pageSize": "abc"}, "pageSize"),
        ({"page_size": "abc"}, "pageSize"),
        ({"pageSize": "5000"}, "pageSize"),
        ({"page_sise": "10"}, "page_sise"),
        ({"nope": ""}, "nope"),
        ([("pageSize", "1"), ("page_size", "2")], "pageSize"),
    ],
)
async def test_a_bad_or_unknown_query_parameter_is_400_naming_it(client, params, field):
    for path in ("/api/v1/runs", "/api/v1/conversations"):
        reply = await client.get(path, params=params)
        assert reply.status_code == 400, (path, reply.text)
        error = error_of(reply)
        assert error["status"] == "INVALID_ARGUMENT"
        fields = [v["field"] for v in detail(error, "BadRequest")["fieldViolations"]]
        assert field in fields, (path, fields)


async def test_query_parameters_in_either_spelling(client):
    for _ in range(2):
        await client.post("/api/v1/conversations", json={"title": "spelling"})
    for name in ("pageSize", "page_size"):
        page = await client.get("/api/v1/conversations", params={name: 1})
        assert page.status_code == 200, page.text
        assert len(page.json()["conversations"]) == 1 and page.json()["nextPageToken"]


def _generate_client(gateway: str, out: Path) -> str:
    """Generate a Python client package from the gateway's document; its import name."""
    document = out / "openapi.json"
    document.write_bytes(httpx.get(f"{gateway}/openapi.json", timeout=30).content)
    config = out / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run on the generated code
    package = "chorus_gateway_client"
    generator = Path(sys.executable).with_name("openapi-python-client")
    done = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(out / package),
            "--meta",
            "none",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in (done.stdout + done.stderr).splitlines():  # /v1 (OpenAI's shape) may warn
        assert "/api/v1/runs " not in line and "/api/v1/runs/{run_id}/events" not in line, line
    return package


def test_a_generated_client_starts_and_reads_a_run(gateway, tmp_path, monkeypatch):
    package = _generate_client(gateway, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    gen = importlib.import_module(package)
    api_runs = importlib.import_module(f"{package}.api.runs")
    models = importlib.import_module(f"{package}.models")
    create_run = importlib.import_module(f"{api_runs.__name__}.create_run")
    get_run = importlib.import_module(f"{api_runs.__name__}.get_run")
    list_runs = importlib.import_module(f"{api_runs.__name__}.list_runs")
    stream_run_events = importlib.import_module(f"{api_runs.__name__}.stream_run_events")

    with gen.Client(base_url=gateway, timeout=httpx.Timeout(60)) as api:
        spec = models.ChorusV1RunSpec(
            template="duet", input_="Generated or handwritten?", max_turns=2
        )
        run = create_run.sync(client=api, body=spec)
        assert isinstance(run, models.ChorusV1Run), run
        assert run.spec.template == "duet" and run.id

        # an event stream is no JSON value: the generated client hands over its bytes
        stream = stream_run_events.sync_detailed(client=api, run_id=run.id)
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        kinds = re.findall(r"^event: (\w+)$", stream.content.decode(), re.M)
        assert kinds[0] == "run_started" and kinds[-1] == "run_completed", kinds
        assert "text_delta" in kinds

        rest = stream_run_events.sync_detailed(
            client=api, run_id=run.id, last_event_id=str(len(kinds) - 1)
        )
        assert re.findall(r"^event: (\w+)$", rest.content.decode(), re.M) == ["run_completed"]
        done = stream_run_events.sync_detailed(client=api, run_id=run.id, after_seq=len(kinds))
        assert done.status_code == 204

        deadline = time.monotonic() + 30  # the record may trail the terminal event a moment
        while (got := get_run.sync(client=api, run_id=run.id)).status.value != (
            "RUN_STATUS_COMPLETED"
        ):
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        assert got.final_answer and got.last_seq == str(len(kinds))

        page = list_runs.sync(client=api, page_size=5)
        assert run.id in [r.id for r in page.runs]

        missing = get_run.sync(client=api, run_id="00000000-0000-4000-8000-0000000000ff")
        assert isinstance(missing, models.Error) and missing.error.status == "NOT_FOUND"
