"""`Flag`: `asyncio.Event`'s interface for objects a process holds thousands of.

An `asyncio.Event` owns a waiter deque from birth (~0.8 KB with the event); a process that
keeps one or two per live run or per SSE stream pays that a thousand times over for
events most of which are waited on once, if ever. A `Flag` holds a bool and, only once
someone waits, one future (~0.1 KB).
"""

from __future__ import annotations

import asyncio


class Flag:
    """A set / clear flag to wait on (`asyncio.Event`'s `is_set`, `set`, `clear`, `wait`),
    plus `future()` for `asyncio.wait`. Bound to the running loop on the first wait."""

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._set

    def set(self) -> None:
        """Set the flag: every waiter wakes up."""
        self._set = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def clear(self) -> None:
        """Unset the flag; later waits wait for the next `set`."""
        self._set = False
        if self._future is not None and self._future.done():
            self._future = None

    def future(self) -> asyncio.Future[None]:
        """A future done once the flag is set (done already if it is). Do not cancel it:
        other waiters share it (`wait` shields it)."""
        future = self._future
        if future is None:
            future = self._future = asyncio.get_running_loop().create_future()
            if self._set:
                future.set_result(None)
        return future

    async def wait(self) -> None:
        """Return once the flag is set (at once if it is). Cancelling a wait leaves the flag
        and its other waiters alone."""
        if not self._set:
            await asyncio.shield(self.future())
