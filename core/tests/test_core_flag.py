"""`chorus.core.flag.Flag`: asyncio.Event's behaviour without its per-object waiter deque."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable

from chorus.core.flag import Flag


async def test_waiters_wake_on_set_and_a_cancelled_wait_leaves_the_others() -> None:
    flag = Flag()
    first = asyncio.ensure_future(flag.wait())
    second = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)  # both are waiting
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert not second.done() and not flag.is_set()
    flag.set()
    await asyncio.wait_for(second, 5)
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 5)  # set: returns at once


async def test_clear_makes_later_waits_wait_for_the_next_set() -> None:
    flag = Flag()
    flag.set()
    assert flag.future().done()
    flag.clear()
    assert not flag.is_set()
    waiting = asyncio.ensure_future(flag.wait())
    done, _ = await asyncio.wait([waiting], timeout=0.05)
    assert not done
    flag.set()
    await asyncio.wait_for(waiting, 5)


async def test_future_serves_asyncio_wait_without_a_task() -> None:
    flag = Flag()
    work = asyncio.ensure_future(asyncio.Event().wait())
    asyncio.get_running_loop().call_soon(flag.set)
    done, _ = await asyncio.wait({work, flag.future()}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {flag.future()} and not work.done()
    work.cancel()


def _traced_bytes(make: Callable[[], object], count: int = 1000) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [make() for _ in range(count)]
        used = tracemalloc.get_traced_memory()[0] - before
        del held
        return used
    finally:
        tracemalloc.stop()


def test_a_thousand_flags_take_a_fraction_of_a_thousand_events() -> None:
    flags, events = _traced_bytes(Flag), _traced_bytes(asyncio.Event)
    assert flags * 4 < events, (flags, events)
