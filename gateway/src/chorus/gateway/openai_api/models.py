"""Models: `GET /v1/models` and `GET /v1/models/{id}` (openai `models.list` / `retrieve`).

Every team template is a model `chorus/<template>`; every provider model whose credentials
are configured is `<provider>/<model>` (a run of the SINGLE `assistant` on it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from chorus.gateway.api.deps import CallerDep, ProviderDep, RunsDep, SettingsDep
from chorus.gateway.openai_api import runs
from chorus.gateway.openai_api.responses import _ERRORS, json_response

router = APIRouter(prefix="/models", tags=["openai"])


def _model(model: runs.Model) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.owned_by}


@router.get(
    "",
    operation_id="listOpenAIModels",
    summary="List the models (team templates and provider models)",
    responses={200: {"description": "`{object: list, data: [Model]}`"}, **_ERRORS},
)
async def list_models(
    caller: CallerDep, runs_stub: RunsDep, provider: ProviderDep, settings: SettingsDep
) -> Response:
    """`chorus/<template>` for every team template, then `<provider>/<model>` for every
    provider model whose credentials are present."""
    models = await runs.list_models(runs_stub, provider, settings.rpc_timeout_s)
    return json_response({"object": "list", "data": [_model(m) for m in models]})


@router.get(
    "/{model_id:path}",
    operation_id="getOpenAIModel",
    summary="Retrieve a model",
    responses={200: {"description": "`{id, object: model, created, owned_by}`"}, **_ERRORS},
)
async def get_model(
    model_id: str,
    caller: CallerDep,
    runs_stub: RunsDep,
    provider: ProviderDep,
    settings: SettingsDep,
) -> Response:
    """One model; 404 (`model_not_found`) when there is no such model."""
    model = await runs.find_model(model_id, runs_stub, provider, settings.rpc_timeout_s)
    return json_response(_model(model))
