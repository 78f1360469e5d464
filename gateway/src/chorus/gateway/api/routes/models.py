"""Models the providers offer (ProviderService.ListModels)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from chorus.gateway import openapi, protojson, routing
from chorus.gateway.api.deps import CallerDep, ProviderDep, SettingsDep
from chorus.v1 import provider_service_pb2

router = routing.router("/models", ["models"])


@router.get(
    "",
    summary="List the configured models",
    operation_id="listProviderModels",
    responses=openapi.responses_of(
        provider_service_pb2.ListModelsResponse, "Models by provider then name; never keys."
    ),
)
async def list_models(
    caller: CallerDep,
    provider_stub: ProviderDep,
    settings: SettingsDep,
    provider: Annotated[str, Query(max_length=128, description="Only this provider's.")] = "",
) -> Response:
    """The configured models with capabilities, context window, prices and whether their
    credentials are present."""
    reply = await provider_stub.ListModels(
        provider_service_pb2.ListModelsRequest(provider=provider), timeout=settings.rpc_timeout_s
    )
    return protojson.response(reply)
