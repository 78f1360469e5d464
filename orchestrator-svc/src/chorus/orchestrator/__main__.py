"""`python -m chorus.orchestrator`: serve chorus.v1.RunService until SIGTERM/SIGINT.

Settings come from `CHORUS_*` environment variables (orchestrator-svc/README.md). On
SIGTERM the server drains for `CHORUS_GRACE_PERIOD_S`; runs still executing then end with
`run_failed` (ORCHESTRATOR_STOPPED, retryable).
"""

from __future__ import annotations

from collections.abc import Sequence

from chorus.core.server import GrpcServer, ServiceBinding, main
from chorus.orchestrator.app import OrchestratorApp, build_app
from chorus.orchestrator.settings import Settings


def run() -> None:
    settings = Settings()
    app: OrchestratorApp | None = None

    async def bindings() -> Sequence[ServiceBinding]:
        nonlocal app
        app = await build_app(settings)
        return app.bindings

    async def on_started(server: GrpcServer) -> None:
        assert app is not None
        await app.on_started(server)

    async def on_shutdown() -> None:
        if app is not None:
            await app.close()

    main(
        "orchestrator",
        settings,
        settings.orchestrator_port,
        bindings,
        on_started=on_started,
        on_shutdown=on_shutdown,
    )


if __name__ == "__main__":
    run()
