"""Team templates (RunService.ListTeamTemplates)."""

from __future__ import annotations

from starlette.responses import Response

from chorus.gateway import openapi, protojson, routing
from chorus.gateway.api.deps import CallerDep, RunsDep, SettingsDep
from chorus.v1 import run_service_pb2

router = routing.router("/teams", ["teams"])


@router.get(
    "",
    summary="List the team templates",
    operation_id="listTeamTemplates",
    responses=openapi.responses_of(run_service_pb2.ListTeamTemplatesResponse, "The templates."),
)
async def list_teams(caller: CallerDep, runs: RunsDep, settings: SettingsDep) -> Response:
    """The built-in team templates (`duet`, `assistant`, `crypto-analysts`,
    `article-pipeline`, …) with their teams, input hints and example inputs."""
    reply = await runs.ListTeamTemplates(
        run_service_pb2.ListTeamTemplatesRequest(), timeout=settings.rpc_timeout_s
    )
    return protojson.response(reply)
