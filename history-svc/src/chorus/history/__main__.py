"""`python -m chorus.history [serve | migrate]`.

* `serve` (the default): serve chorus.v1.HistoryService until SIGTERM/SIGINT (pending
  migrations are applied first unless `CHORUS_MIGRATE_ON_START=false`).
* `migrate`: apply pending schema migrations to the configured database and exit
  (`--list` prints the pending ones without applying them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from chorus.core.logging import configure_logging, get_logger
from chorus.core.server import GrpcServer, ServiceBinding, main
from chorus.history.app import HistoryApp, build_app
from chorus.history.migrate import apply_migrations, pending_migrations
from chorus.history.settings import Settings


def _serve(settings: Settings) -> None:
    app: HistoryApp | None = None

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
        "history",
        settings,
        settings.history_port,
        bindings,
        on_started=on_started,
        on_shutdown=on_shutdown,
    )


def _migrate(settings: Settings, list_only: bool) -> int:
    configure_logging("history", level=settings.log_level, json=settings.log_json)
    log = get_logger("chorus.history.migrate")
    database = "postgresql" if settings.database_url else f"sqlite:{settings.sqlite_path}"
    try:
        if list_only:
            pending = pending_migrations(settings)
            log.info("migrations_pending", database=database, migrations=pending)
        else:
            applied = apply_migrations(settings)
            log.info("migrations_applied", database=database, migrations=applied)
    except Exception as exc:
        log.error("migration_failed", database=database, error=str(exc))
        return 1
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chorus.history",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve HistoryService (default)")
    migrate = sub.add_parser("migrate", help="apply pending schema migrations and exit")
    migrate.add_argument("--list", action="store_true", help="only list pending migrations")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "migrate":
        return _migrate(settings, args.list)
    _serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(run())
