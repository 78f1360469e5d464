"""Processes the benchmarks start: the fake OpenAI-compatible upstream, the Chorus stack on
PostgreSQL + Redis, LiteLLM's proxy in its own virtualenv, and load-client runs.

Everything binds to 127.0.0.1; every process is stopped when its context exits.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chorus.core.testing import ServiceProcess, free_port

REPO = Path(__file__).resolve().parents[1]
ANCHORS = REPO.parent / "shared" / "anchors"
RESULTS = REPO / "bench" / "results"
LITELLM_VENV = REPO / ".venv-litellm"
LITELLM_KEY = "sk-local-benchmark-key-7f3a9c2e1b5d8f4a6c0e"
TOKEN = "bench-internal-token"


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status < 500:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not up within {timeout} s")


@contextmanager
def upstream(delay_ms: float = 0) -> Iterator[str]:
    """`fake_openai.py` under uvicorn+uvloop; yields its base URL (`http://…/v1`)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "fake_openai:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--log-level",
            "warning",
            "--app-dir",
            str(ANCHORS),
        ],
        env={**os.environ, "DELAY_MS": str(delay_ms)},
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/v1/models", 30, proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


LITELLM_PIDS: dict[str, int] = {}
"""The process id of each running LiteLLM proxy (its workers are its child processes), by
the chat URL `litellm()` yielded."""


@dataclass(frozen=True)
class Server:
    """A server process a benchmark started: its base URL and its process id."""

    url: str
    pid: int


@contextmanager
def uvicorn_app(app: str, env: dict[str, str], health: str) -> Iterator[Server]:
    """`python -m uvicorn <app>` (uvloop, httptools) on a free port with `env` added to the
    environment; yields it once `GET <url><health>` answers, stops it at exit."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={**os.environ, **env},
        cwd=REPO,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + health, 30, proc)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def paced_upstream(tokens_per_s: float, tokens: int = 200) -> Iterator[Server]:
    """`bench.paced_upstream` (one token per SSE event, `tokens_per_s` per stream); yields
    it with `url` = its `/v1` base."""
    env = {"PACED_TPS": str(tokens_per_s), "PACED_TOKENS": str(tokens)}
    with uvicorn_app("bench.paced_upstream:app", env, "/v1/models") as server:
        yield Server(f"{server.url}/v1", server.pid)


@contextmanager
def relay(upstream_url: str) -> Iterator[Server]:
    """`bench.relay` (the bare one-hop Python relay) in front of `upstream_url` (a server's
    root URL; paths are kept)."""
    with uvicorn_app("bench.relay:app", {"RELAY_UPSTREAM": upstream_url}, "/v1/models") as server:
        yield server


@contextmanager
def private_redis() -> Iterator[Server]:
    """A throw-away `redis-server` of the benchmark's own on a free port (no persistence), so
    Redis's CPU can be told apart from other users of the machine's Redis; `url` is its
    `redis://` URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)
        client.close()
        yield Server(f"redis://127.0.0.1:{port}/0", proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def install_litellm() -> Path | None:
    """LiteLLM's proxy from `bench/requirements-litellm.txt` in its own virtualenv
    (`.venv-litellm`, installed on first use); its `litellm` command, or None when it cannot
    be installed here."""
    python = LITELLM_VENV / "bin" / "python"
    command = LITELLM_VENV / "bin" / "litellm"
    if command.exists():
        return command
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    requirements = str(REPO / "bench" / "requirements-litellm.txt")
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", requirements], check=False
    )
    return command if done.returncode == 0 and command.exists() else None


@contextmanager
def litellm(upstream_base: str, workers: int = 1) -> Iterator[str | None]:
    """LiteLLM's proxy (`workers` worker processes) in front of `upstream_base`; yields its
    chat URL, or None when it cannot be installed here. Installed once into `.venv-litellm`
    (`install_litellm`). The proxy's process id is `LITELLM_PIDS[url]`; its workers are its
    child processes."""
    command = install_litellm()
    if command is None:
        yield None
        return
    port = free_port()
    config = RESULTS / f"litellm-{port}.yaml"
    config.write_text(
        "model_list:\n  - model_name: sim\n    litellm_params:\n      model: openai/sim\n"
        f"      api_base: {upstream_base}\n      api_key: sk-fake\n"
        f"general_settings:\n  master_key: {LITELLM_KEY}\nlitellm_settings:\n  drop_params: true\n"
    )
    # Its output goes to a file: a proxy that fails to start says why there.
    log_path = RESULTS / f"litellm-{port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                str(command),
                "--config",
                str(config),
                "--port",
                str(port),
                "--num_workers",
                str(workers),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                # no internet here: use the bundled model cost map instead of fetching it
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                # with workers, uvicorn's supervisor restarts a worker that has not answered
                # its health check within 5 s: importing LiteLLM takes longer on a busy
                # machine, and the workers were killed and restarted for ever
                "TIMEOUT_WORKER_HEALTHCHECK": "120",
            },
        )
    try:
        try:
            _wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180, proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"LiteLLM's proxy did not start ({exc}); its log ends:\n{tail}"
            ) from None
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        LITELLM_PIDS[url] = proc.pid
        yield url
    finally:
        import psutil

        try:
            workers_left = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers_left = []
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        for worker in psutil.wait_procs(workers_left, timeout=10)[1]:
            worker.kill()


REDIS_URL = "redis://127.0.0.1:6379/0"


@contextmanager
def redis_prefix(label: str) -> Iterator[str]:
    """A unique Redis key prefix (`chorus-bench-<label>-<hex>:`) on 127.0.0.1:6379; every key
    under it is deleted at exit, so benchmark runs leave nothing in the machine's Redis."""
    import redis

    prefix = f"chorus-bench-{label}-{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        finally:
            client.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A throw-away PostgreSQL database on 127.0.0.1:5432; yields its URL."""
    import psycopg

    name = f"chorus_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rss_mb(pid: int) -> float:
    """Resident memory of process `pid`, MB (VmRSS from /proc; 0 when it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    """CPU time (user + system) process `pid` used so far, seconds (0 when it has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stack:
    """The four Chorus services as separate processes on free ports."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: dict[str, ServiceProcess] = {}
        self.addresses: dict[str, str] = {}

    def __enter__(self) -> Stack:
        base = {
            **self.env,
            "CHORUS_INTERNAL_TOKEN": TOKEN,
            "CHORUS_DEV_MODE": "true",
        }
        for name in ("provider", "history"):
            self.procs[name] = ServiceProcess(
                f"chorus.{name}", env={**base, f"CHORUS_{name.upper()}_PORT": "0"}
            )
        for name in ("provider", "history"):
            self.addresses[name] = self.procs[name].wait_ready(60)
        wiring = {
            "CHORUS_PROVIDER_ADDRESS": self.addresses["provider"],
            "CHORUS_HISTORY_ADDRESS": self.addresses["history"],
        }
        self.procs["orchestrator"] = ServiceProcess(
            "chorus.orchestrator", env={**base, **wiring, "CHORUS_ORCHESTRATOR_PORT": "0"}
        )
        self.addresses["orchestrator"] = self.procs["orchestrator"].wait_ready(60)
        gateway_port = free_port()
        self.procs["gateway"] = ServiceProcess(
            "chorus.gateway",
            env={
                **base,
                **wiring,
                "CHORUS_ORCHESTRATOR_ADDRESS": self.addresses["orchestrator"],
                "CHORUS_GATEWAY_PORT": str(gateway_port),
                "CHORUS_AUTH_MODE": "none",
                "CHORUS_RATE_LIMIT_RUNS": "1000000/minute",
                "CHORUS_RATE_LIMIT_MESSAGES": "1000000/minute",
            },
        )
        self.procs["gateway"].wait_ready(60)
        self.addresses["gateway"] = f"http://127.0.0.1:{gateway_port}"
        return self

    def rss_mb(self) -> dict[str, float]:
        """Resident memory of each service process, MB (from /proc)."""
        return {name: _rss_mb(proc.proc.pid) for name, proc in self.procs.items()}

    def cpu_s(self) -> dict[str, float]:
        """CPU time each service process used so far, seconds (from /proc)."""
        return {name: _cpu_s(proc.proc.pid) for name, proc in self.procs.items()}

    @contextmanager
    def peak_rss(self, interval_s: float = 0.5) -> Iterator[dict[str, float]]:
        """Sample each service's resident memory every `interval_s` while the block runs;
        the yielded dict holds the peak per service (MB) once the block exits."""
        peak = self.rss_mb()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(interval_s):
                for name, mb in self.rss_mb().items():
                    peak[name] = max(peak[name], mb)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            yield peak
        finally:
            stop.set()
            sampler.join()
            for name, mb in self.rss_mb().items():
                peak[name] = max(peak[name], mb)

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs.values()):
            proc.stop()
        log_dir = os.environ.get("CHORUS_BENCH_LOG_DIR")
        if log_dir:  # each service's log lines, to look into a surprising figure
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            for name, proc in self.procs.items():
                (Path(log_dir) / f"{name}.log").write_text("\n".join(proc.lines) + "\n")


def load(
    mode: str, target: str, concurrency: int, tokens: int, *extra: str, timeout: float = 900
) -> dict[str, object]:
    """Run `bench.load_client` in its own process; return its JSON result, with the CPU
    seconds the client process used (`client_cpu_s`, user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load_client",
            mode,
            target,
            str(concurrency),
            str(tokens),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["client_cpu_s"] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
    )
    return result
