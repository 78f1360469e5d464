"""`python -m chorus.provider`: serve chorus.v1.ProviderService until SIGTERM/SIGINT."""

from __future__ import annotations

from chorus.core.server import ServiceBinding, main
from chorus.provider.app import ProviderApp, build_app
from chorus.provider.settings import Settings


def run() -> None:
    """Read settings, serve on `CHORUS_PROVIDER_PORT`, close upstream clients on shutdown."""
    settings = Settings()
    app: list[ProviderApp] = []

    async def bindings() -> list[ServiceBinding]:
        app.append(await build_app(settings))
        return app[0].bindings

    async def shutdown() -> None:
        if app:
            await app[0].close()

    main("provider", settings, settings.provider_port, bindings, on_shutdown=shutdown)


if __name__ == "__main__":
    run()
