"""`chorus.v1.RunService` over gRPC: request checks and proto shapes; the work is in
`chorus.orchestrator.manager.RunManager`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from chorus.core.errors import InvalidArgument
from chorus.core.identity import current_identity
from chorus.orchestrator.manager import RunManager
from chorus.orchestrator.watches import WatchRunsCall
from chorus.v1 import run_pb2, run_service_pb2_grpc
from chorus.v1 import run_service_pb2 as rs


def _spec(request: rs.CreateRunRequest | rs.StreamRunRequest) -> run_pb2.RunSpec:
    if not request.HasField("spec"):
        raise InvalidArgument("spec is required", [("spec", "required")])
    return request.spec


class RunServicer(run_service_pb2_grpc.RunServiceServicer):
    """The RunService servicer.

    Args:
        manager: the replica's runs.
    """

    def __init__(self, manager: RunManager) -> None:
        self._manager = manager

    async def CreateRun(
        self, request: rs.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> rs.CreateRunResponse:
        run, _ = await self._manager.create(current_identity().user, _spec(request))
        return rs.CreateRunResponse(run=run)

    async def StreamRun(
        self, request: rs.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rs.StreamRunResponse]:
        user = current_identity().user
        run, _ = await self._manager.create(user, _spec(request))
        run_id = run.id
        cancel_on_disconnect = run.spec.on_disconnect == run_pb2.ON_DISCONNECT_CANCEL
        del run  # ~1 KB of message, not kept for the stream's life
        try:
            async for event in self._manager.watch(user, run_id, 0):
                yield rs.StreamRunResponse(event=event)
        except (GeneratorExit, asyncio.CancelledError):
            # The client went away before the end (grpc#43360: either exception).
            if cancel_on_disconnect:
                self._manager.cancel_on_disconnect(user, run_id)
            raise

    async def WatchRun(
        self, request: rs.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rs.WatchRunResponse]:
        user = current_identity().user
        async for event in self._manager.watch(user, request.run_id, request.after_seq):
            yield rs.WatchRunResponse(event=event)

    async def WatchRuns(
        self,
        request_iterator: AsyncIterator[rs.WatchRunsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rs.WatchRunsResponse]:
        call = WatchRunsCall(self._manager, current_identity())
        async for response in call.serve(request_iterator):
            yield response

    async def GetRun(
        self, request: rs.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> rs.GetRunResponse:
        return rs.GetRunResponse(
            run=await self._manager.get(current_identity().user, request.run_id)
        )

    async def ListRuns(
        self, request: rs.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> rs.ListRunsResponse:
        return await self._manager.list(current_identity().user, request)

    async def CancelRun(
        self, request: rs.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> rs.CancelRunResponse:
        run, cancelled, message = await self._manager.cancel(
            current_identity().user, request.run_id, request.reason
        )
        return rs.CancelRunResponse(run=run, cancelled=cancelled, message=message)

    async def DeleteRun(
        self, request: rs.DeleteRunRequest, context: grpc.aio.ServicerContext
    ) -> rs.DeleteRunResponse:
        await self._manager.delete(current_identity().user, request.run_id)
        return rs.DeleteRunResponse()

    async def UpdateRunAgent(
        self, request: rs.UpdateRunAgentRequest, context: grpc.aio.ServicerContext
    ) -> rs.UpdateRunAgentResponse:
        agent = await self._manager.update_agent(current_identity().user, request)
        return rs.UpdateRunAgentResponse(agent=agent)

    async def SubmitRunInput(
        self, request: rs.SubmitRunInputRequest, context: grpc.aio.ServicerContext
    ) -> rs.SubmitRunInputResponse:
        run, event = await self._manager.submit_input(current_identity().user, request)
        return rs.SubmitRunInputResponse(run=run, event=event)

    async def ListTeamTemplates(
        self, request: rs.ListTeamTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> rs.ListTeamTemplatesResponse:
        return rs.ListTeamTemplatesResponse(templates=self._manager.templates())
