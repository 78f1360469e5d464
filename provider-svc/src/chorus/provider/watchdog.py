"""Time limits on waits for the upstream: time to first event and idle time between events.

`Watchdog` guards the task serving one StreamChat call. `arm(seconds)` starts a wait that may
last at most `seconds`; `disarm()` ends it (time spent handing events to a slow caller never
counts). When a wait overruns, the watchdog cancels the task; the code awaiting the
upstream catches the `CancelledError`, sees `consume()` return True and turns it into a
timeout — the cancellation travels through the backend's generator first, which closes the
upstream HTTP response.

Per event this costs one clock read and two attribute writes: a single timer handle is
re-armed lazily (only when it fires early or a shorter limit is asked for), instead of a
new timer or task per event.
"""

from __future__ import annotations

import asyncio
import math


class Watchdog:
    """Cancels the current task when an armed wait passes its deadline.

    Create it inside the task it guards; call `close()` when done.
    """

    __slots__ = ("_deadline", "_handle", "_loop", "_recheck", "_task", "fired")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Watchdog needs a running task")
        self._task = task
        self._deadline = math.inf
        self._handle: asyncio.TimerHandle | None = None
        self._recheck = math.inf
        self.fired = False

    def arm(self, seconds: float) -> None:
        """Start a wait of at most `seconds`."""
        deadline = self._loop.time() + seconds
        self._deadline = deadline
        if seconds < self._recheck:
            self._recheck = seconds
        handle = self._handle
        if handle is None or deadline < handle.when():
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(deadline, self._check)

    def disarm(self) -> None:
        """End the current wait."""
        self._deadline = math.inf

    def consume(self) -> bool:
        """True (once) if the watchdog caused the current cancellation; it is then undone."""
        if not self.fired:
            return False
        self.fired = False
        self._task.uncancel()
        return True

    def close(self) -> None:
        """Stop watching."""
        self._deadline = math.inf
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        now = self._loop.time()
        if now >= self._deadline:
            self._handle = None
            self._deadline = math.inf
            self.fired = True
            self._task.cancel()
            return
        # Not due (re-armed since) or disarmed: look again at the deadline, or after the
        # shortest limit in use when disarmed (any later arm() ends no earlier than that).
        at = self._deadline if self._deadline != math.inf else now + self._recheck
        self._handle = self._loop.call_at(at, self._check)
