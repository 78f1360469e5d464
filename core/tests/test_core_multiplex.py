"""`chorus.core.multiplex`: the server side's gathering of keyed streams into responses
(order, response size cap, per-stream buffer, pause / resume, stop, errors, the response
window, the tick between responses of a busy call), the client side's acknowledgements and the rule of whom a request acts for. The
gRPC side is covered where it is used (provider-svc's StreamChats, orchestrator-svc's
WatchRuns, the gateway's SSE and WebSocket streams)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from chorus.core.errors import InvalidArgument, NotFound, PermissionDenied
from chorus.core.identity import SYSTEM_USER, Identity
from chorus.core.multiplex import MultiplexClient, MultiplexServer, Outbox, Update, acting_user
from chorus.core.testing import wait_for

Response = list[Update]


class Harness:
    """A MultiplexServer fed from a queue of requests (callables run by `handle`)."""

    def __init__(self, **options: Any) -> None:
        self.server: MultiplexServer[int, Response] = MultiplexServer(list, **options)
        self.requests: asyncio.Queue[Callable[[], None] | None] = asyncio.Queue()
        self.responses = self.server.serve(self._requests(), lambda request: request())

    async def _requests(self) -> AsyncIterator[Callable[[], None]]:
        while (request := await self.requests.get()) is not None:
            yield request

    def send(self, request: Callable[[], None]) -> None:
        self.requests.put_nowait(request)

    async def next(self) -> Response:
        async with asyncio.timeout(5):
            return await anext(self.responses)


def producing(*items: int, then: BaseException | None = None) -> Any:
    async def produce(outbox: Outbox[int]) -> None:
        for item in items:
            await outbox.put(item)
        if then is not None:
            raise then

    return produce


async def test_a_streams_items_go_out_in_order_in_responses_of_at_most_max_items() -> None:
    h = Harness(max_items=4)
    h.send(lambda: h.server.open(1, producing(*range(10))))
    first, second, third = await h.next(), await h.next(), await h.next()
    assert first == [(1, [0, 1, 2, 3], None)]
    assert second == [(1, [4, 5, 6, 7], None)]
    assert third[0][:2] == (1, [8, 9]) and third[0][2] is not None and third[0][2].code == 0
    h.send(None)  # half-close: every stream ended, so the call ends
    with pytest.raises(StopAsyncIteration):
        await h.next()


async def test_streams_with_news_share_a_response() -> None:
    h = Harness()

    def open_both() -> None:
        h.server.open(1, producing(10, 11))
        h.server.open(2, producing(20))

    h.send(open_both)
    response = await h.next()
    assert [(key, items) for key, items, _ in response] == [(1, [10, 11]), (2, [20])]
    assert all(status is not None and status.code == 0 for _, _, status in response)


async def test_a_producer_waits_at_buffer_items_until_the_sender_took_them() -> None:
    h = Harness(buffer_items=3)
    h.send(lambda: h.server.open(1, producing(*range(7))))
    response = await h.next()
    assert response == [(1, [0, 1, 2], None)]  # it stopped at 3 unsent items
    rest = [await h.next(), await h.next()]
    assert [items for r in rest for _, items, _ in r] == [[3, 4, 5], [6]]


async def test_a_paused_stream_sends_nothing_until_resumed_and_loses_nothing() -> None:
    h = Harness()
    gate = asyncio.Event()
    put_two = asyncio.Event()
    handled = asyncio.Event()

    async def produce(outbox: Outbox[int]) -> None:
        await outbox.put(1)
        await gate.wait()
        await outbox.put(2)  # not sent yet when the pause comes
        put_two.set()
        await outbox.put(3)  # put while paused: held, and the producer waits here

    async def other(outbox: Outbox[int]) -> None:
        await outbox.put(99)

    h.send(lambda: h.server.open(1, produce))
    assert await h.next() == [(1, [1], None)]
    h.send(gate.set)
    async with asyncio.timeout(5):
        await put_two.wait()

    def pause_and_open_other() -> None:
        h.server.pause(1)
        h.server.open(2, other)
        handled.set()

    h.send(pause_and_open_other)
    async with asyncio.timeout(5):
        await handled.wait()
    response = await h.next()
    assert [key for key, _, _ in response] == [2]  # only the other stream
    h.send(lambda: h.server.resume(1))
    items: list[int] = []
    while True:
        (key, got, status), *_ = await h.next()
        assert key == 1
        items += got
        if status is not None:
            break
    assert items == [2, 3] and status.code == 0


async def test_stop_cancels_the_producer_and_runs_on_stop_only_before_the_end() -> None:
    h = Harness()
    stopped: list[int] = []
    cancelled = asyncio.Event()

    async def forever(outbox: Outbox[int]) -> None:
        await outbox.put(1)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    h.send(lambda: h.server.open(1, forever, on_stop=lambda: stopped.append(1)))
    h.send(lambda: h.server.open(2, producing(5), on_stop=lambda: stopped.append(2)))
    seen: dict[int, Any] = {}
    while 2 not in seen or 1 not in seen:
        for key, _, status in await h.next():
            seen[key] = status
    h.send(lambda: (h.server.stop(1), h.server.stop(2)))
    async with asyncio.timeout(5):
        await cancelled.wait()
    assert stopped == [1]  # stream 2 had ended: no on_stop
    h.send(None)
    with pytest.raises(StopAsyncIteration):
        await h.next()


async def test_a_producers_error_ends_its_stream_with_its_status() -> None:
    h = Harness()

    def open_failing() -> None:
        h.server.open(1, producing(1, then=NotFound("no such run")))
        h.server.open(2, producing(then=RuntimeError("a bug")))

    h.send(open_failing)
    statuses = {}
    while len(statuses) < 2:
        for key, _, status in await h.next():
            if status is not None:
                statuses[key] = status
    assert statuses[1].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert statuses[1].message == "no such run"
    assert statuses[2].code == grpc.StatusCode.INTERNAL.value[0]
    assert "a bug" not in statuses[2].message  # never the exception text


async def test_a_request_raising_a_chorus_error_ends_the_call() -> None:
    h = Harness()

    def bad() -> None:
        raise InvalidArgument("watch_id must be greater than 0", [("watch_id", "must be > 0")])

    h.send(bad)
    with pytest.raises(InvalidArgument):
        await h.next()


async def test_with_a_window_the_sender_waits_for_acknowledgements_and_gathers_meanwhile() -> None:
    h = Harness()
    gate = asyncio.Event()
    all_put = asyncio.Event()

    async def produce(outbox: Outbox[int]) -> None:
        await outbox.put(0)
        await gate.wait()
        for item in range(1, 6):
            await outbox.put(item)
        all_put.set()

    h.send(lambda: h.server.flow(1, 0))
    h.send(lambda: h.server.open(1, produce))
    assert await h.next() == [(1, [0], None)]
    waiting = asyncio.ensure_future(h.next())
    gate.set()
    async with asyncio.timeout(5):
        await all_put.wait()
    for _ in range(10):  # turns of the loop in which an unlimited sender would have sent
        await asyncio.sleep(0)
    assert not waiting.done()  # one response out, none acknowledged: the window is full
    h.send(lambda: h.server.flow(0, 1))
    ((key, items, status),) = await waiting
    assert (key, items) == (1, [1, 2, 3, 4, 5])  # everything gathered meanwhile, at once
    assert status is not None and status.code == 0


async def test_a_window_is_not_waited_on_once_the_client_half_closed() -> None:
    h = Harness()
    gate = asyncio.Event()

    async def produce(outbox: Outbox[int]) -> None:
        await outbox.put(0)
        await gate.wait()
        await outbox.put(1)

    h.send(lambda: h.server.flow(1, 0))
    h.send(lambda: h.server.open(1, produce))
    assert await h.next() == [(1, [0], None)]
    h.send(None)  # no acknowledgement can come any more
    gate.set()
    ((_, items, status),) = await h.next()
    assert items == [1] and status is not None and status.code == 0


async def test_on_a_busy_call_news_within_a_tick_leaves_in_one_response_at_the_ticks_end() -> None:
    tick = 0.3
    h = Harness(tick_s=tick, idle_s=60)
    loop = asyncio.get_running_loop()
    gates = {key: asyncio.Event() for key in (1, 2, 3)}

    def stream(key: int) -> Any:
        async def produce(outbox: Outbox[int]) -> None:
            await outbox.put(key * 10)  # a stream's first item: sent at once
            await gates[key].wait()
            await outbox.put(key * 10 + 1)  # not idle: waits for the tick

        return produce

    def open_all() -> None:
        for key in gates:
            h.server.open(key, stream(key))

    h.send(open_all)
    first: list[int] = []
    while len(first) < 3:
        response = await h.next()
        first += [item for _, items, _ in response for item in items]
        sent_at = loop.time()
    assert sorted(first) == [10, 20, 30]
    for gate in gates.values():  # one stream's news per loop turn, as tokens come in
        gate.set()
        await asyncio.sleep(0)
    response = await h.next()
    assert sorted(item for _, items, _ in response for item in items) == [11, 21, 31]
    assert loop.time() - sent_at >= tick * 0.9  # it waited for the tick's end


async def test_the_first_item_of_an_idle_stream_does_not_wait_for_the_tick() -> None:
    h = Harness(tick_s=60, idle_s=60)  # a tick no test would wait for
    more = asyncio.Event()

    async def busy(outbox: Outbox[int]) -> None:
        await outbox.put(1)
        await more.wait()
        await outbox.put(2)  # within the tick and not idle: held
        await asyncio.Event().wait()

    async def newcomer(outbox: Outbox[int]) -> None:
        await outbox.put(100)
        await asyncio.Event().wait()

    h.send(lambda: h.server.open(1, busy))
    assert await h.next() == [(1, [1], None)]  # the call was quiet: at once
    more.set()
    waiting = asyncio.ensure_future(h.next())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()  # stream 1's second item waits for the tick
    h.send(lambda: h.server.open(2, newcomer))
    async with asyncio.timeout(5):
        response = await waiting
    # the newcomer's first item went at once, taking what the call held with it
    assert sorted((key, tuple(items)) for key, items, _ in response) == [(1, (2,)), (2, (100,))]
    h.server.stop(1)
    h.server.stop(2)


async def test_an_urgent_item_goes_at_once_unless_other_news_waits_for_the_tick() -> None:
    h = Harness(tick_s=60, idle_s=60)  # a tick no test would wait for
    go_1, more, go_2 = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def one(outbox: Outbox[int]) -> None:
        await outbox.put(1)
        await go_1.wait()
        await outbox.put(2, urgent=True)  # nothing else waits: at once
        await more.wait()
        await outbox.put(3)  # within the tick and not idle: held
        await asyncio.Event().wait()

    async def two(outbox: Outbox[int]) -> None:
        await outbox.put(20)
        await go_2.wait()
        await outbox.put(21, urgent=True)  # stream 1's news waits: this one too
        await asyncio.Event().wait()

    h.send(lambda: h.server.open(1, one))
    assert await h.next() == [(1, [1], None)]
    h.send(lambda: h.server.open(2, two))
    assert await h.next() == [(2, [20], None)]  # a stream's first item
    go_1.set()
    assert await h.next() == [(1, [2], None)]  # Harness.next gives up after 5 s
    more.set()
    go_2.set()
    waiting = asyncio.ensure_future(h.next())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()  # both wait for the tick's end, to leave in one response
    waiting.cancel()
    h.server.stop(1)
    h.server.stop(2)


async def test_a_stream_whose_buffer_is_full_does_not_wait_for_the_tick() -> None:
    h = Harness(tick_s=60, idle_s=60, buffer_items=3)

    async def produce(outbox: Outbox[int]) -> None:
        for item in range(9):
            await outbox.put(item)
        await asyncio.Event().wait()

    h.send(lambda: h.server.open(1, produce))
    responses = [await h.next() for _ in range(3)]
    assert responses == [[(1, [0, 1, 2], None)], [(1, [3, 4, 5], None)], [(1, [6, 7, 8], None)]]
    h.server.stop(1)


class FakeCall:
    """What `open_call` returns in a MultiplexClient test: responses fed by the test,
    requests collected as the client's request iterator yields them."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.sent: list[Any] = []
        self._pump = asyncio.ensure_future(self._take(requests))

    async def _take(self, requests: AsyncIterator[Any]) -> None:
        async for request in requests:
            self.sent.append(request)

    def __aiter__(self) -> FakeCall:
        return self

    async def __anext__(self) -> Any:
        response = await self.responses.get()
        if response is None:
            raise StopAsyncIteration
        return response

    def cancel(self) -> None:
        self._pump.cancel()


class Sink:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def deliver(self, items: Any) -> None:
        self.items.extend(items)

    def end(self, error: BaseException | None) -> None:
        pass


async def test_a_client_with_a_window_announces_it_and_acknowledges_what_it_read() -> None:
    calls: list[FakeCall] = []

    def open_call(requests: AsyncIterator[Any]) -> FakeCall:
        calls.append(FakeCall(requests))
        return calls[-1]

    client: MultiplexClient[Any] = MultiplexClient(
        open_call,
        lambda response: response,
        "Test",
        flow=lambda window, acknowledged: ("flow", window, acknowledged),
        window=2,
    )
    sink = Sink()
    client.open(sink, lambda key: ("open", key))
    (call,) = calls
    for n in range(3):  # three responses before the request iterator runs again
        call.responses.put_nowait([(1, [n], None)])
    await wait_for(lambda: len(sink.items) == 3 and ("flow", 0, 3) in call.sent, timeout=5)
    # the window first, then one acknowledgement for the three responses read
    assert call.sent == [("flow", 2, 0), ("open", 1), ("flow", 0, 3)]
    call.responses.put_nowait([(1, [3], None)])
    await wait_for(lambda: ("flow", 0, 1) in call.sent, timeout=5)
    assert sink.items == [0, 1, 2, 3]
    client.close()


def test_acting_user_is_the_named_user_only_for_the_system_identity() -> None:
    system = Identity(SYSTEM_USER, "internal-token")
    alice = Identity("alice", "internal-token")
    assert acting_user(system, "bob") == "bob"
    assert acting_user(alice, "") == "alice"
    assert acting_user(alice, "alice") == "alice"
    with pytest.raises(InvalidArgument) as missing:
        acting_user(system, "")
    assert missing.value.violations == [("user", "required")]
    with pytest.raises(PermissionDenied):
        acting_user(alice, "bob")
