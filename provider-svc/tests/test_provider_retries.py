"""Our retry loop, fallbacks, cool-downs, timeouts, deadlines and cancellation, over real sockets."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from provider_helpers import (
    DROP,
    STALL,
    FakeUpstream,
    Reply,
    chunk,
    error_reply,
    expect_status,
    kinds,
    openai_text_reply,
    request,
)

from chorus.core.testing import free_port, wait_for
from chorus.v1 import chat_pb2

pytestmark = pytest.mark.timeout(60)


def _openai(**fields):  # type: ignore[no-untyped-def]
    return request("hi", provider="openai", model="gpt-4o-mini", **fields)


async def test_rate_limit_with_retry_after_is_retried_after_that_delay(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(error_reply(429, "slow down", {"retry-after": "0.4"}), openai_text_reply("ok"))
    p = await provider()
    events = await p.collect(_openai())

    assert kinds(events) == ["start", "text_delta", "usage", "finish"]
    assert events[0].start.retries == 1
    first, second = upstream.requests
    assert second.at - first.at >= 0.4


async def test_retry_after_above_the_cap_is_not_waited_and_returns_retry_info(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(error_reply(429, "quota", {"retry-after": "120"}))
    p = await provider(retry_after_cap_s=30)
    started = time.monotonic()
    status = await expect_status(p.stream(_openai()))

    assert time.monotonic() - started < 5
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.retry_delay_s == pytest.approx(120, abs=1)
    assert status.info is not None and status.info.reason == "UPSTREAM_RATE_LIMITED"
    assert status.info.metadata["http_status"] == "429"
    assert len(upstream.requests) == 1


async def test_server_errors_use_up_the_attempts_then_the_fallback_model_answers(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(
        error_reply(500), error_reply(502), error_reply(503), openai_text_reply("from 4o")
    )
    p = await provider(max_attempts=3)
    events = await p.collect(
        _openai(fallbacks=[chat_pb2.ModelRef(provider="openai", model="gpt-4o")])
    )

    start = events[0].start
    assert (start.model.model, start.fallback, start.retries) == ("gpt-4o", True, 3)
    assert [r.body["model"] for r in upstream.requests] == ["gpt-4o-mini"] * 3 + ["gpt-4o"]
    assert kinds(events)[-1] == "finish"


async def test_when_every_attempt_fails_the_status_is_unavailable_with_the_attempt_count(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(*(error_reply(503, "down") for _ in range(3)))
    p = await provider(max_attempts=3)
    status = await expect_status(p.stream(_openai()))

    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.info is not None
    assert (status.info.reason, status.info.metadata["attempts"]) == ("UPSTREAM_UNAVAILABLE", "3")
    assert "down" in status.message


async def test_bad_request_from_upstream_is_not_retried(upstream: FakeUpstream, provider) -> None:
    upstream.queue(error_reply(400, "messages too long"))
    p = await provider()
    status = await expect_status(p.stream(_openai()))

    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.info is not None and status.info.reason == "UPSTREAM_BAD_REQUEST"
    assert len(upstream.requests) == 1


async def test_failure_after_the_first_delta_is_not_retried_and_ends_with_one_error_event(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[chunk({"content": "Hel"}), chunk({"content": "lo"}), DROP]))
    p = await provider()
    events = await p.collect(_openai())

    assert kinds(events) == ["start", "text_delta", "text_delta", "error"]
    assert events[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert len(upstream.requests) == 1


async def test_stream_closed_without_finish_is_an_error_event(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[chunk({"content": "Hel"})]))  # body ends: no finish, no [DONE]
    p = await provider()
    events = await p.collect(_openai())

    assert kinds(events) == ["start", "text_delta", "error"]
    assert "before it finished" in events[-1].error.message


async def test_idle_stall_after_the_first_delta_hits_the_idle_timeout(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[chunk({"content": "Hel"}), b": ping\n\n", STALL]))
    p = await provider(idle_timeout_s=0.3)
    started = time.monotonic()
    events = await p.collect(_openai())

    assert kinds(events) == ["start", "text_delta", "error"]
    error = events[-1].error
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "idle timeout" in error.message
    assert 0.3 <= time.monotonic() - started < 5
    await wait_for(lambda: upstream.disconnects == 1, timeout=10)


async def test_no_first_event_within_the_first_event_timeout_is_retried(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[b": ping\n\n", STALL]), openai_text_reply("ok"))
    p = await provider(first_event_timeout_s=0.3)
    events = await p.collect(_openai())

    assert events[0].start.retries == 1
    assert kinds(events)[-1] == "finish"
    await wait_for(lambda: upstream.disconnects == 1, timeout=10)


async def test_the_callers_deadline_ends_a_stalled_upstream_and_closes_it(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[STALL]))
    p = await provider()
    started = time.monotonic()
    status = await expect_status(p.stream(_openai(), timeout=0.5))

    assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    await wait_for(lambda: upstream.disconnects == 1, timeout=10)


async def test_a_retry_delay_past_the_callers_deadline_is_not_waited_for(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(error_reply(429, "busy", {"retry-after": "5"}))
    p = await provider(retry_after_cap_s=30)
    started = time.monotonic()
    status = await expect_status(p.stream(_openai(), timeout=2))

    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 1.5
    assert len(upstream.requests) == 1


async def test_a_model_that_keeps_failing_is_cooled_down_and_skipped(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(error_reply(500), error_reply(500), openai_text_reply("fallback"))
    p = await provider(max_attempts=2, cooldown_failures=2, cooldown_s=60)
    fallbacks = [chat_pb2.ModelRef(provider="openai", model="gpt-4o")]
    first = await p.collect(_openai(fallbacks=fallbacks))
    assert first[0].start.model.model == "gpt-4o"
    assert len(upstream.requests) == 3

    # gpt-4o-mini is cooling down: the next request goes straight to the fallback ...
    upstream.queue(openai_text_reply("fallback again"))
    second = await p.collect(_openai(fallbacks=fallbacks))
    assert (second[0].start.model.model, second[0].start.fallback) == ("gpt-4o", True)
    assert [r.body["model"] for r in upstream.requests[3:]] == ["gpt-4o"]

    # ... and without a fallback it fails fast, without calling the upstream.
    status = await expect_status(p.stream(_openai()))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.info is not None and status.info.reason == "MODEL_COOLING_DOWN"
    assert len(upstream.requests) == 4


async def test_an_unreachable_upstream_is_unavailable(provider) -> None:
    p = await provider(openai_base_url=f"http://127.0.0.1:{free_port()}/v1", max_attempts=2)
    status = await expect_status(p.stream(_openai()))

    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.info is not None and status.info.reason == "UPSTREAM_UNREACHABLE"


async def test_caller_cancelling_mid_stream_closes_the_upstream_connection(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[chunk({"content": "one"}), chunk({"content": " two"}), STALL]))
    p = await provider()
    call = p.stream(_openai())
    seen = [await call.read(), await call.read(), await call.read()]
    assert kinds(seen) == ["start", "text_delta", "text_delta"]

    call.cancel()
    await wait_for(lambda: upstream.disconnects == 1, timeout=10)
    with pytest.raises(asyncio.CancelledError):
        await call.read()


async def test_the_service_keeps_serving_after_upstream_failures(
    upstream: FakeUpstream, provider
) -> None:
    upstream.queue(Reply(steps=[chunk({"content": "x"}), DROP]), error_reply(400))
    p = await provider()
    await p.collect(_openai())
    await expect_status(p.stream(_openai()))
    upstream.queue(openai_text_reply("still here"))
    events = await p.collect(_openai())
    assert events[1].text_delta.text == "still here"
