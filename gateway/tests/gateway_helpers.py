"""Helpers of the gateway tests: credentials, run specs, an SSE reader, metric scraping."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chorus.core.testing import ServiceProcess

TOKEN = "gateway-test-internal-token"
API_KEYS = {"alice": "chorus_alice_test_key_0123456789", "bob": "chorus_bob_test_key_9876543210"}
TERMINAL = ("run_completed", "run_failed", "run_cancelled")


CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium, which the browser tests drive with Playwright (`make browser-deps`)."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
"""Where browser tests keep their screenshots."""


def base_env(data_dir: Path) -> dict[str, str]:
    """Settings every test process shares: token, embedded storage, a fast simulator."""
    return {
        "CHORUS_INTERNAL_TOKEN": TOKEN,
        "CHORUS_DEV_MODE": "false",
        "CHORUS_DATA_DIR": str(data_dir),
        "CHORUS_DATABASE_URL": "",
        "CHORUS_REDIS_URL": "",
        "CHORUS_GRACE_PERIOD_S": "2",
        "CHORUS_LOG_LEVEL": "INFO",
        "CHORUS_SIMULATOR_TIME_TO_FIRST_TOKEN_S": "0.01",
        "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "2000",
    }


def api_key_hashes_json() -> str:
    """`CHORUS_API_KEY_HASHES` for `API_KEYS`."""
    return json.dumps({hashlib.sha256(k.encode()).hexdigest(): u for u, k in API_KEYS.items()})


def duet(topic: str = "Tabs or spaces?", max_turns: int = 2, **extra: Any) -> dict[str, Any]:
    """A RunSpec (proto3 JSON) of the `duet` template."""
    return {"template": "duet", "input": topic, "maxTurns": max_turns, **extra}


def slow_duet(
    topic: str = "Is slow good?",
    *,
    tokens_per_second: float = 100,
    output_tokens: int = 40,
    max_turns: int = 2,
    time_to_first_token: str = "0.01s",
    **extra: Any,
) -> dict[str, Any]:
    """An inline two-agent round-robin team on the simulator at a chosen speed, so a run
    stays live long enough to drop, reload or cancel it."""
    sim = {
        "tokensPerSecond": tokens_per_second,
        "outputTokens": output_tokens,
        "timeToFirstToken": time_to_first_token,
    }
    agents = [
        {
            "name": name,
            "systemPrompt": f"You are {name}. Debate the topic briefly.",
            "model": {"provider": "simulator", "model": "sim-1"},
            "simulator": sim,
        }
        for name in ("Ada", "Blaise")
    ]
    team = {"kind": "TEAM_KIND_ROUND_ROBIN", "agents": agents, "maxTurns": max_turns}
    return {"team": team, "input": topic, "maxTurns": max_turns, **extra}


@dataclass
class SseFrame:
    """One SSE frame (`event`, `id`, joined `data`) or a comment (`comment` set)."""

    event: str = "message"
    id: str | None = None
    data: str = ""
    comment: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def sse_frames(response: httpx.Response) -> AsyncIterator[SseFrame]:
    """Parse an SSE body per the WHATWG rules (comments and `retry:` reported too)."""
    frame = SseFrame()
    data: list[str] = []
    seen = False
    async for line in response.aiter_lines():
        if line == "":
            if seen:
                frame.data = "\n".join(data)
                yield frame
            frame, data, seen = SseFrame(), [], False
            continue
        if line.startswith(":"):
            yield SseFrame(comment=line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        seen = True
        if name == "event":
            frame.event = value
        elif name == "id":
            frame.id = value
        elif name == "data":
            data.append(value)
        elif name == "retry":
            frame.retry = int(value)
    if seen:
        frame.data = "\n".join(data)
        yield frame


async def read_events(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    stop_after: int | None = None,
) -> tuple[httpx.Response, list[SseFrame]]:
    """Open an event stream and collect its event frames (comments skipped), until the
    stream ends or `stop_after` events were read (then the connection is dropped)."""
    frames: list[SseFrame] = []
    async with client.stream(
        method, url, headers={"Accept": "text/event-stream", **(headers or {})}, json=json_body
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return response, frames
        async for frame in sse_frames(response):
            if frame.comment is not None or not frame.data:
                continue
            frames.append(frame)
            if stop_after is not None and len(frames) >= stop_after:
                break
    return response, frames


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples `name` in exposition `text` whose labels include
    `labels` (0 when none)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", re.M)
    total = 0.0
    for match in pattern.finditer(text):
        label_text = match.group(1) or ""
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(match.group(2))
    return total


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The AIP-193 `error` object of an error response (asserting its shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "status", "details"}, error
    assert error["code"] == response.status_code
    return error


def detail(error: dict[str, Any], type_name: str) -> dict[str, Any]:
    """The detail of `error` whose `@type` ends with `type_name` (e.g. `BadRequest`)."""
    for d in error["details"]:
        if d["@type"].endswith("." + type_name):
            return d
    raise AssertionError(f"no {type_name} in {error['details']}")


@dataclass
class Backend:
    """The three gRPC services, running."""

    provider: str
    history: str
    orchestrator: str
    processes: list[ServiceProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Settings pointing a gateway at these services."""
        return {
            "CHORUS_PROVIDER_ADDRESS": self.provider,
            "CHORUS_HISTORY_ADDRESS": self.history,
            "CHORUS_ORCHESTRATOR_ADDRESS": self.orchestrator,
        }


class Gateways:
    """Gateway processes by configuration, started on first use, stopped at session end."""

    def __init__(self, backend: Backend, data_dir: Path) -> None:
        self.backend = backend
        self.data_dir = data_dir
        self._running: dict[frozenset[tuple[str, str]], ServiceProcess] = {}

    def process(self, **settings: str) -> ServiceProcess:
        """The gateway process with these `CHORUS_*` settings (names without the prefix)."""
        env = {f"CHORUS_{k.upper()}": v for k, v in settings.items()}
        key = frozenset(env.items())
        proc = self._running.get(key)
        if proc is None:
            proc = ServiceProcess(
                "chorus.gateway",
                env={
                    **base_env(self.data_dir),
                    **self.backend.env(),
                    "CHORUS_GATEWAY_PORT": "0",
                    "CHORUS_RATE_LIMIT_RUNS": "1000/minute",
                    "CHORUS_RATE_LIMIT_MESSAGES": "1000/minute",
                    **env,
                },
                log_event="listening",
            )
            self._running[key] = proc
            proc.wait_ready()
        return proc

    def url(self, **settings: str) -> str:
        """Base URL (`http://127.0.0.1:port`) of the gateway with these settings."""
        address = self.process(**settings).address
        assert address is not None
        return address

    def stop(self) -> None:
        for proc in self._running.values():
            proc.stop()
        self._running.clear()


@contextlib.asynccontextmanager
async def browser_page(browser: Any, base_url: str) -> AsyncIterator[Any]:
    """A new Playwright page (own context, downloads on) at `base_url`; fails the test if
    the page raised a JavaScript error meanwhile."""
    context = await browser.new_context(base_url=base_url, accept_downloads=True)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        await context.close()
    assert not errors, f"JavaScript errors: {errors}"
