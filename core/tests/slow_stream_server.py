"""A ProviderService whose StreamChat yields 10 deltas 100 ms apart, served by
`chorus.core.server.main` — the graceful-shutdown test runs it as a process."""

from __future__ import annotations

import asyncio

from chorus.core.server import ServiceBinding, main
from chorus.core.settings import CoreSettings
from chorus.v1 import provider_service_pb2 as pb
from chorus.v1 import provider_service_pb2_grpc as pbg


class SlowProvider(pbg.ProviderServiceServicer):
    async def StreamChat(self, request, context):
        for i in range(10):
            await asyncio.sleep(0.1)
            yield pb.StreamChatResponse(text_delta=pb.StreamChatResponse.TextDelta(text=str(i)))


class SlowApp:
    """The app `main` serves: one ProviderService binding, nothing to close."""

    def __init__(self) -> None:
        self.bindings = [
            ServiceBinding(
                "chorus.v1.ProviderService",
                SlowProvider(),
                pbg.add_ProviderServiceServicer_to_server,
            )
        ]

    async def close(self) -> None:
        pass


async def build_app() -> SlowApp:
    return SlowApp()


if __name__ == "__main__":
    main("slow", CoreSettings(), 0, build_app)
