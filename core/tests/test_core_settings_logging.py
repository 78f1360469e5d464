"""Settings from the environment and JSON logs without secrets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chorus.core.settings import ConfigurationError, CoreSettings


def test_settings_read_chorus_prefixed_environment(monkeypatch):
    monkeypatch.setenv("CHORUS_GRACE_PERIOD_S", "2.5")
    monkeypatch.setenv("CHORUS_INTERNAL_TOKEN", "s3cret")
    settings = CoreSettings()
    assert settings.grace_period_s == 2.5
    assert "s3cret" not in repr(settings)


def test_settings_refuse_to_run_without_token_unless_dev_mode():
    with pytest.raises(ConfigurationError, match="CHORUS_INTERNAL_TOKEN"):
        CoreSettings(internal_token=None, dev_mode=False).check_security()
    CoreSettings(internal_token=None, dev_mode=True).check_security()


_LOG_SCRIPT = """
import structlog
from chorus.core.logging import configure_logging, get_logger
configure_logging("test", level="INFO", json=True)
structlog.contextvars.bind_contextvars(request_id="r-7", user="alice", run_id="run-1")
get_logger("t").info("called", api_key="sk-live-123", authorization="Bearer x", internal_token="t0k", turns=3, input_tokens=12, cause=ValueError("boom"))
get_logger("t").debug("hidden")
import logging
logging.getLogger("httpx").info("HTTP Request: POST http://upstream 200 OK")
logging.getLogger("httpx").warning("upstream connection reset")
"""


def test_json_logs_carry_context_and_redact_secrets():
    # A process of its own: logging configuration is process-global.
    done = subprocess.run(
        [sys.executable, "-c", _LOG_SCRIPT], capture_output=True, text=True, check=True
    )
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, "DEBUG and the HTTP client's per-request INFO must be filtered"
    record = json.loads(lines[0])
    assert json.loads(lines[1])["event"] == "upstream connection reset"
    assert record["event"] == "called"
    assert (record["request_id"], record["user"], record["run_id"], record["service"]) == (
        "r-7",
        "alice",
        "run-1",
        "test",
    )
    assert record["api_key"] == "***" and record["authorization"] == "***"
    assert record["internal_token"] == "***"
    assert record["turns"] == 3 and record["input_tokens"] == 12, "counts are not secrets"
    assert record["cause"] == "ValueError('boom')", "values JSON cannot hold are their repr"
    assert "sk-live-123" not in done.stderr


_GC_SCRIPT = """
import gc, json
from chorus.core.garbage_collection import configure_gc
from chorus.core.settings import CoreSettings
configure_gc(CoreSettings(dev_mode=True))
print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


@pytest.mark.parametrize(
    ("env", "threshold0", "frozen"),
    [({}, 10_000, True), ({"CHORUS_GC_THRESHOLD": "0", "CHORUS_GC_FREEZE": "false"}, 700, False)],
)
def test_the_garbage_collector_is_tuned_as_configured(env, threshold0, frozen):
    # In a child process: gc settings are process-wide and must not leak into the test run.
    out = subprocess.run(
        [sys.executable, "-c", _GC_SCRIPT],
        env={"PATH": "", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threshold"] == [threshold0, 10, 10]
    assert (result["frozen"] > 1000) is frozen


def test_a_negative_gc_threshold_is_refused(monkeypatch):
    monkeypatch.setenv("CHORUS_GC_THRESHOLD", "-1")
    with pytest.raises(ValueError, match="gc_threshold"):
        CoreSettings()


_STDLIB_SCRIPT = """
import asyncio, logging, sys
from chorus.core.logging import configure_logging
configure_logging("test", level=sys.argv[1], json=sys.argv[2] == "json")
lib = logging.getLogger("autogen_core")
try:
    raise asyncio.CancelledError()
except asyncio.CancelledError:
    lib.error("Error processing publish message for writer", exc_info=True)
try:
    raise BaseExceptionGroup("group", [asyncio.CancelledError()])
except BaseExceptionGroup:
    lib.exception("Error in group")
logging.getLogger("uvicorn.error").info("Application startup complete.")
try:
    raise ValueError("a real bug")
except ValueError:
    lib.exception("handler failed")
"""


def _log_lines(level: str, mode: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _STDLIB_SCRIPT, level, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stderr.strip().splitlines()


def test_stdlib_lines_keep_their_logger_name_and_cancellations_are_not_errors():
    records = [json.loads(line) for line in _log_lines("INFO", "json")]
    assert [(r["event"], r["logger_name"], r["level"]) for r in records] == [
        ("Application startup complete.", "uvicorn.error", "info"),
        ("handler failed", "autogen_core", "error"),
    ]
    assert "ValueError: a real bug" in records[1]["exception"]


def test_at_debug_a_cancellation_is_one_debug_line_without_its_traceback():
    records = [json.loads(line) for line in _log_lines("DEBUG", "json")]
    cancelled = [r for r in records if r["event"].startswith("Error")]
    assert [(r["level"], "exception" in r) for r in cancelled] == [("debug", False)] * 2


def test_console_lines_name_their_logger_and_print_tracebacks_plainly():
    lines = _log_lines("INFO", "console")
    assert "[uvicorn.error]" in next(x for x in lines if "Application startup" in x)
    assert not any("CancelledError" in x or "Error processing" in x for x in lines), lines
    assert "Traceback (most recent call last):" in lines
    assert not any("╭" in x or "│" in x for x in lines), "rich boxes of locals"
    assert len(lines) < 15, lines
