"""`python -m chorus.history [serve | migrate [--list]]` (typer, as every Chorus command line).

* `serve` (the default): serve chorus.v1.HistoryService until SIGTERM/SIGINT (pending
  migrations are applied first unless `CHORUS_MIGRATE_ON_START=false`).
* `migrate`: apply pending schema migrations to the configured database and exit
  (`--list` prints the pending ones without applying them).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from chorus.core.logging import configure_logging, get_logger
from chorus.core.server import main
from chorus.history.app import HistoryApp, build_app
from chorus.history.migrate import apply_migrations, pending_migrations
from chorus.history.settings import Settings


def _serve(settings: Settings) -> None:
    main(
        "history",
        settings,
        settings.history_port,
        lambda: build_app(settings),
        on_started=HistoryApp.on_started,
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


cli = typer.Typer(
    help="Serve chorus.v1.HistoryService (the default), or apply the schema migrations.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@cli.callback(invoke_without_command=True)
def _default(ctx: typer.Context) -> None:
    """Serve HistoryService (also without a command)."""
    if ctx.invoked_subcommand is None:
        _serve(Settings())


@cli.command("serve")
def serve() -> None:
    """Serve HistoryService until SIGTERM / SIGINT (migrations applied first)."""
    _serve(Settings())


@cli.command("migrate")
def migrate(
    list_only: Annotated[
        bool, typer.Option("--list", help="Only list the pending migrations.")
    ] = False,
) -> None:
    """Apply the pending schema migrations and exit (1 when one fails)."""
    raise typer.Exit(_migrate(Settings(), list_only))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); returns the exit code.
    Usage errors exit 2 (typer)."""
    try:
        cli(args=list(argv) if argv is not None else None, prog_name="python -m chorus.history")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
