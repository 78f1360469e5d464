"""Structured logs: JSON lines (structlog) carrying request id, user and run id.

`configure_logging` is called once per process. Context values are bound with
`structlog.contextvars.bind_contextvars` (the interceptors bind `request_id` and `user`; the
orchestrator binds `run_id`), so every log line of a request or run carries them. Values of
keys that look like secrets are replaced by `"***"`.

Lines of standard-library loggers (uvicorn, grpc, autogen, …) go through the same renderer
and keep their logger's name (`logger_name`, as `get_logger(name)` lines have it). A record
whose exception is a cancellation (`asyncio.CancelledError`: a run cancelled, a client gone,
Ctrl-C) is an expected event that its owner logs as one INFO line, so a library's "error
processing message" traceback about it is dropped (kept, without the traceback, at DEBUG).
Console output (`json=False`, `make run`) prints real tracebacks plainly — no rich boxes of
local variables (long, and locals may hold secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import orjson
import structlog

from chorus.core.tracing import add_trace_ids

# `internal_token`, `api_key`, `authorization`… but not counts such as `input_tokens`.
_SECRET_KEY = re.compile(
    r"(secret|password|passwd|api_?key|authorization|credential|cookie|(^|_)token$)", re.I
)


def redact_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of any secret-looking key with `***`."""
    for key in list(event_dict):
        if key != "event" and _SECRET_KEY.search(key):
            event_dict[key] = "***"
    return event_dict


def _orjson_text(value: Any, **_: Any) -> str:
    """JSON of a log line with orjson (structlog's performance advice; ~10× the stdlib's
    `json.dumps`); values it cannot encode are written as their `repr`."""
    return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def add_logger_name(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor for standard-library records: their logger's name as `logger_name`
    (the key `get_logger(name)` uses), unless the line already has one."""
    record = event_dict.get("_record")
    if record is not None and "logger_name" not in event_dict:
        event_dict["logger_name"] = record.name
    return event_dict


def _is_cancellation(error: BaseException | None) -> bool:
    """A cancellation, or an exception group made only of cancellations."""
    if isinstance(error, asyncio.CancelledError):
        return True
    if isinstance(error, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in error.exceptions)
    return False


class CancellationFilter(logging.Filter):
    """Drops standard-library records about a cancellation (`exc_info` holds an
    `asyncio.CancelledError`), e.g. autogen_core's "Error processing publish message"
    traceback for every cancelled run or stopped service. At DEBUG the line stays, demoted to
    DEBUG and without its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not _is_cancellation(error):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


CHATTY_LOGGERS = ("httpx", "httpx2", "httpcore")
"""Standard-library loggers kept at WARNING or above whatever the level (per-request lines)."""


def configure_logging(service: str, *, level: str = "INFO", json: bool = True) -> None:
    """Route structlog and stdlib logging to stderr as JSON (or console) lines.

    Args:
        service: the service name put on every line (`service` key).
        level: minimum level name (`DEBUG`, `INFO`, …).
        json: JSON lines when true, coloured console output otherwise.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,  # trace_id / span_id when tracing is on
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info
            if json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _LogStream(sys.stderr))),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries that log through the standard library end up as JSON lines too (with their
    # traceback as text under `exception`, as structlog's own lines have it).
    exc_info: list[Any] = [structlog.processors.format_exc_info] if json else []
    handler = logging.StreamHandler(_LogStream(sys.stderr))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exc_info,
                renderer,
            ],
            foreign_pre_chain=[add_logger_name, *shared],
        )
    )
    handler.addFilter(CancellationFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # HTTP clients log every request at INFO ("HTTP Request: POST … 200 OK"): one line per
    # model call that our own logs already cover, and its formatting on the hot path.
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


class _LogStream:
    """The log's stream, minus the failures of a reader that went away: a service whose
    stderr pipe is closed (its launcher was killed) keeps serving and still shuts down in
    order on SIGTERM, instead of dying half-way through its shutdown on BrokenPipeError."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except (OSError, ValueError):  # broken pipe, closed file
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger; `name` is added as the `logger_name` key.

    Safe at import time: the logger stays lazy until first use, so it follows the
    configuration `configure_logging` installs later.
    """
    if name:
        return structlog.get_logger(logger_name=name)  # type: ignore[no-any-return]
    return structlog.get_logger()  # type: ignore[no-any-return]
