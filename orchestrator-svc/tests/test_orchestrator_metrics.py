"""The orchestrator's own metrics carry the `chorus_orchestrator_` prefix, as provider-svc's
(`chorus_provider_`), history-svc's (`chorus_history_`) and the gateway's carry theirs (issue 23)."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from chorus.orchestrator import metrics


def test_every_orchestrator_metric_has_the_service_prefix():
    defined = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(defined) >= 18
    names = {m._name for m in defined}
    assert all(n.startswith("chorus_orchestrator_") for n in names), sorted(names)
    exported = {s.name for family in REGISTRY.collect() for s in family.samples}
    assert "chorus_orchestrator_runs_active" in exported
    assert not any(n.startswith(("chorus_run_", "chorus_runs_", "chorus_model_")) for n in exported)
