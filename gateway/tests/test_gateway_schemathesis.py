"""Schemathesis over `/openapi.json` against a real gateway and the real services (issue 23,
item 2): for every `/api/v1`, `/v1`, health and metrics operation, a few hundred generated
requests — valid ones, invalid ones, and valid ones naming a run, agent and conversation that
exist — with a fixed seed; any 5xx, and any response whose status, content type or body the
document does not describe, fails.

An invalid request answered 2xx is not a failure here: the schemas give the canonical proto3
JSON, and proto3 JSON parsers accept more (`null` for a default, int32 as a numeric string,
enum numbers), which the gateway accepts like every proto3 JSON client expects.

Bounded: `MAX_EXAMPLES` per operation, no shrinking, each request at most `REQUEST_TIMEOUT_S`
(a run started by a generated body ends within it: the test simulator streams 2,000
tokens/s). `CHORUS_SCHEMATHESIS_EXAMPLES` changes the count (e.g. 1000 for a longer hunt).
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import pytest
import schemathesis
from gateway_helpers import slow_duet
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = int(os.environ.get("CHORUS_SCHEMATHESIS_EXAMPLES", "200"))
REQUEST_TIMEOUT_S = 60
SEED = 20231
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(gateway: str) -> Any:
    """The gateway's document: `/api/v1`, the OpenAI-compatible `/v1` (its errors in
    OpenAI's shape, as documented), health and metrics (`/docs` and the page are not API)."""
    schema = schemathesis.openapi.from_url(f"{gateway}/openapi.json")
    return schema.include(path_regex=r"^/(api/v1/|v1/|health|metrics)")


@pytest.fixture(scope="module")
def known(gateway: str) -> dict[str, str]:
    """Path parameters naming things that exist: a finished run of agents Ada and Blaise, and
    its conversation — so generated requests reach the services, not only 404s."""
    with httpx.Client(base_url=gateway, timeout=60) as http:
        run = http.post("/api/v1/runs", json=slow_duet("Fuzz me", tokens_per_second=2000))
        assert run.status_code == 201, run.text
        run_id = run.json()["id"]
        with http.stream("GET", f"/api/v1/runs/{run_id}/events") as events:
            assert events.status_code == 200
            events.read()  # the stream ends with the run
        conversation = http.get(f"/api/v1/runs/{run_id}").json()["conversationId"]
    return {"run_id": run_id, "conversation_id": conversation, "agent_name": "Ada"}


def _exercise(
    operation: Any,
    mode: GenerationMode,
    path_parameters: dict[str, str] | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> int:
    """Up to `max_examples` requests of `operation` generated in `mode` (fewer when it has
    fewer distinct inputs), with the given path parameters if any; raises the first failure.
    Returns how many were sent."""
    sent = 0
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @given(case=strategy)
    @seed(SEED)
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

    call()
    return sent


@pytest.mark.timeout(1800)
def test_every_operation_answers_as_documented(api_schema: Any, known: dict[str, str]) -> None:
    # One loop rather than schemathesis' pytest plugin (its lazy parametrization does not
    # run under pytest 9); every operation is exercised and every failure reported.
    failures: list[str] = []
    sent: dict[str, int] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 25, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                sent[f"{operation.label} ({mode.value})"] = _exercise(operation, mode)
            except Unsatisfiable:
                # nothing of it can be invalid (no body, no parameter with a type to break)
                assert mode == GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])
        names = re.findall(r"{(\w+)}", operation.path)
        if names and operation.method.upper() != "DELETE":  # keep what exists
            try:
                sent[f"{operation.label} (existing)"] = _exercise(
                    operation,
                    GenerationMode.POSITIVE,
                    {name: known[name] for name in names if name in known},
                    MAX_EXAMPLES // 2,
                )
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} (existing): {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
    print(f"schemathesis: {sum(sent.values())} requests", sent)
    with_input = [k for k in sent if k.startswith(("POST", "PATCH")) and "(positive)" in k]
    assert with_input and all(sent[k] >= MAX_EXAMPLES // 2 for k in with_input), sent
