"""The one gRPC → HTTP translation: canonical codes, AIP-193 bodies, headers."""

from __future__ import annotations

import grpc
import orjson
import pytest

from chorus.core.errors import InvalidArgument, ResourceExhausted
from chorus.gateway import errors

CANONICAL = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def test_every_grpc_code_has_its_canonical_http_status() -> None:
    assert {code.name: status for code, status in errors.HTTP_STATUS.items()} == CANONICAL
    assert set(errors.HTTP_STATUS) == set(grpc.StatusCode)


def test_field_violations_become_bad_request_details() -> None:
    exc = InvalidArgument("invalid", [("spec.maxTurns", "must be 1..100"), ("input", "required")])
    response = errors.error_response(exc)
    body = orjson.loads(response.body)
    assert response.status_code == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    info, bad = body["error"]["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["domain"] == "chorus.dev" and info["reason"] == "INVALID_ARGUMENT"
    assert bad == {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [
            {"field": "spec.maxTurns", "description": "must be 1..100"},
            {"field": "input", "description": "required"},
        ],
    }


@pytest.mark.parametrize(("delay", "header"), [(0.2, "1"), (1.0, "1"), (7.3, "8"), (60, "60")])
def test_retry_info_becomes_retry_after_in_whole_seconds(delay: float, header: str) -> None:
    response = errors.error_response(ResourceExhausted("slow down", retry_after_s=delay))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == header


def test_auth_errors_carry_their_challenge() -> None:
    exc = errors.AuthenticationRequired("who are you", challenge='Basic realm="chorus"')
    response = errors.error_response(exc)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="chorus"'


def test_unexpected_exceptions_are_internal_without_details_of_the_bug() -> None:
    response = errors.error_response(KeyError("secret internals"))
    body = orjson.loads(response.body)
    assert response.status_code == 500
    assert body["error"]["status"] == "INTERNAL"
    assert "secret" not in response.body.decode()


def test_validation_locations_become_field_paths() -> None:
    exc = errors.validation_error(
        [
            {"loc": ("query", "page_size"), "msg": "Input should be less than or equal to 1000"},
            {"loc": ("body", "team", "agents", 0, "name"), "msg": "Field required"},
        ]
    )
    assert exc.violations == [
        ("page_size", "Input should be less than or equal to 1000"),
        ("team.agents[0].name", "Field required"),
    ]
