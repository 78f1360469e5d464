"""`python -m chorus.provider`: serve chorus.v1.ProviderService until SIGTERM/SIGINT."""

from __future__ import annotations

from chorus.core.server import main
from chorus.provider.app import build_app
from chorus.provider.settings import Settings


def run() -> None:
    """Read settings, serve on `CHORUS_PROVIDER_PORT`, close upstream clients on shutdown."""
    settings = Settings()
    main("provider", settings, settings.provider_port, lambda: build_app(settings))


if __name__ == "__main__":
    run()
