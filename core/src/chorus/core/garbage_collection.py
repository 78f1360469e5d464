"""How a service's process runs CPython's cyclic garbage collector.

A service holds many long-lived objects (per live run: agents, calls, buffered events) and
allocates many short-lived ones per streamed event. With CPython's default thresholds
(700, 10, 10) the collector runs a young collection every 700 net allocations and keeps
re-walking the objects that survived; under load that was ~10 % of orchestrator-svc's CPU in
the slow-streams benchmark at 600 runs (py-spy --native, bench/README.md); with a young
threshold of 10,000 and the freeze it fell below what the profile sees.

`configure_gc` raises the young threshold and, once the service is built, freezes what
exists then (modules, the framework, settings: `gc.freeze`, as CPython's docs advise for
long-running servers), so no collection walks those objects again. Reference counting still
frees almost everything at once; only cycles wait for a collection.
"""

from __future__ import annotations

import gc

from chorus.core.logging import get_logger
from chorus.core.settings import CoreSettings

log = get_logger(__name__)


def configure_gc(settings: CoreSettings) -> None:
    """Apply `settings.gc_threshold` (young-generation threshold, net allocations; 0 keeps
    CPython's default) and, when `settings.gc_freeze` is on, move every object alive now into
    the permanent generation (`gc.freeze()`). Call it once the service is built, just before
    it serves. Never raises."""
    if settings.gc_threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(settings.gc_threshold, older, oldest)
    if settings.gc_freeze:
        gc.collect()  # what is garbage now should not be kept forever
        gc.freeze()
    log.debug("gc_configured", threshold=gc.get_threshold(), frozen_objects=gc.get_freeze_count())
