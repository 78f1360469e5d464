"""Repository-wide pytest hooks.

With `CI=true`, a test skipped because PostgreSQL or Redis is missing is a failure: such
tests skip through `chorus.core.testing.require_service`, whose reason starts with
`requires-service:`.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() in ("1", "true") and report.skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        if "requires-service:" in reason:
            report.outcome = "failed"
            report.longrepr = f"CI=true and a required service is missing: {reason}"
