"""The OpenAI-compatible API under `/v1`: any OpenAI client drives a Chorus team (issue 20).

* `GET /v1/models`, `GET /v1/models/{id}` — team templates and provider models (`models`);
* the Responses API — a response is a run (`responses`, `mapping`);
* Chat Completions — the transcript of the team's messages (`chat`);
* errors in OpenAI's shape (`errors.OpenAIErrorMiddleware`).

Same authentication (`Authorization: Bearer <key>` in apikey mode; any key is the
anonymous user in mode `none`), rate limits and identity as `/api/v1`.

`install(app)` adds the router and the error middleware; call it after the gateway's own
middleware is added (the error middleware must wrap the request-size limit's 413).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from chorus.gateway.api.deps import current_caller
from chorus.gateway.openai_api import chat, models, responses
from chorus.gateway.openai_api.errors import OpenAIErrorMiddleware

PREFIX = "/v1"

OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "description": "OpenAI's error shape.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "example": "invalid_request_error"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True, "example": "model_not_found"},
            },
        }
    },
}


def build_router() -> APIRouter:
    """The `/v1` router (every route authenticated like `/api/v1`)."""
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(current_caller)])
    for module in (models, responses, chat):
        router.include_router(module.router)
    return router


def install(app: FastAPI) -> None:
    """Serve the OpenAI-compatible API on `app`."""
    app.include_router(build_router())
    app.add_middleware(OpenAIErrorMiddleware)
    previous = app.openapi

    def openapi() -> dict[str, object]:
        schema = previous()
        schema.setdefault("components", {}).setdefault("schemas", {})["OpenAIError"] = (
            OPENAI_ERROR_SCHEMA
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
