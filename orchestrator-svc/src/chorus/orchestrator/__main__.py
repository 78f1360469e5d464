"""`python -m chorus.orchestrator`: serve chorus.v1.RunService until SIGTERM/SIGINT.

Settings come from `CHORUS_*` environment variables (orchestrator-svc/README.md). On
SIGTERM the replica reports NOT_SERVING, accepts no new runs and hands its live runs over
within `CHORUS_GRACE_PERIOD_S` (less one second for the server's own drain): each stops at
its next turn boundary with its checkpoint stored and its lease released, so another
replica continues it at once (issue 18, "Handoff on SIGTERM").
"""

from __future__ import annotations

from chorus.core.server import GrpcServer, main
from chorus.orchestrator.app import OrchestratorApp, build_app
from chorus.orchestrator.settings import Settings


def run() -> None:
    """Read settings, serve on `CHORUS_ORCHESTRATOR_PORT`; on SIGTERM hand the runs over."""
    settings = Settings()

    async def hand_over(app: OrchestratorApp, server: GrpcServer) -> None:
        await app.manager.hand_over(max(settings.grace_period_s - 1.0, 0.5))

    main(
        "orchestrator",
        settings,
        settings.orchestrator_port,
        lambda: build_app(settings),
        on_started=OrchestratorApp.on_started,
        on_stopping=hand_over,
    )


if __name__ == "__main__":
    run()
