"""`python -m chorus.orchestrator`: serve chorus.v1.RunService until SIGTERM/SIGINT.

Settings come from `CHORUS_*` environment variables (orchestrator-svc/README.md). On
SIGTERM the replica reports NOT_SERVING, accepts no new runs and hands its live runs over
within `CHORUS_GRACE_PERIOD_S` (less one second for the server's own drain): each stops at
its next turn boundary with its checkpoint stored and its lease released, so another
replica continues it at once (issue 18, "Handoff on SIGTERM").
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

    async def on_stopping(server: GrpcServer) -> None:
        if app is not None:
            await app.manager.hand_over(max(settings.grace_period_s - 1.0, 0.5))

    async def on_shutdown() -> None:
        if app is not None:
            await app.close()

    main(
        "orchestrator",
        settings,
        settings.orchestrator_port,
        bindings,
        on_started=on_started,
        on_stopping=on_stopping,
        on_shutdown=on_shutdown,
    )


if __name__ == "__main__":
    run()
