"""The `chorus` commands a new user types first, against real provider-svc, history-svc and
orchestrator-svc processes (embedded storage, the simulator at full speed), the CLI itself
run as a process whose output is a pipe (issue 23 item 10):

* it finds the stack on `CHORUS_*_PORT`, as `make run` binds it;
* "connection refused" says the stack is not running and how to start it;
* `chorus run nosuch` lists the templates; `--on-interrupt` is a choice;
* piped `chorus runs list` prints values whole (tab-separated), `--output json` the reply;
* `chorus runs export` has `format`, `exportTime` and `complete`, as the REST export.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import CHORUS_COMMAND, Done

from chorus.core.testing import backend_processes, free_port

LONG_INPUT = (
    "Should a small bakery in a quiet town open on Sundays, given the cost of staff and the "
    "tourists who come only in summer?"
)


@dataclass
class Stack:
    ports: dict[str, int]
    cwd: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli-stack")
    env = {
        "CHORUS_DEV_MODE": "true",
        "CHORUS_INTERNAL_TOKEN": "",
        "CHORUS_DATA_DIR": str(tmp / "data"),
        "CHORUS_DATABASE_URL": "",
        "CHORUS_REDIS_URL": "",
        "CHORUS_GRACE_PERIOD_S": "2",
    }
    fast = {
        "CHORUS_SIMULATOR_TOKENS_PER_SECOND": "0",
        "CHORUS_SIMULATOR_TIME_TO_FIRST_TOKEN_S": "0",
    }
    with backend_processes(env, provider_env=fast, ready_timeout_s=60) as b:
        ports = {
            name: int(address.rsplit(":", 1)[1])
            for name, address in (
                ("provider", b.provider),
                ("history", b.history),
                ("orchestrator", b.orchestrator),
            )
        }
        cwd = tmp / "cwd"  # no .env here
        cwd.mkdir()
        yield Stack(ports, cwd)


def chorus(stack: Stack, *args: str, ports: dict[str, int] | None = None) -> Done:
    """`chorus ARGS` with only `CHORUS_*_PORT` telling it where the stack is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    env |= {f"CHORUS_{n.upper()}_PORT": str(p) for n, p in (ports or stack.ports).items()}
    env["COLUMNS"] = "80"
    done = subprocess.run(
        [*CHORUS_COMMAND, *args],
        env=env,
        cwd=stack.cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Done(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def finished_run(stack: Stack) -> str:
    """A completed duet run with an input longer than a table cell."""
    done = chorus(stack, "run", "duet", "--input", LONG_INPUT, "--max-turns", "2")
    assert done.code == 0, done
    listed = json.loads(chorus(stack, "runs", "list", "--output", "json").out)
    return str(listed["runs"][0]["id"])


def test_the_cli_finds_the_stack_on_the_make_run_ports(stack: Stack) -> None:
    done = chorus(stack, "teams")
    assert done.code == 0, done
    assert "duet" in done.out and "crypto-analysts" in done.out


def test_connection_refused_says_the_stack_is_not_running_and_how_to_start_it(
    stack: Stack,
) -> None:
    nobody = free_port()
    done = chorus(stack, "runs", "list", ports={**stack.ports, "orchestrator": nobody})
    assert done.code == 4, done
    assert f"cannot reach orchestrator at 127.0.0.1:{nobody}" in done.err, done.err
    assert "stack is not running" in done.err and "make run" in done.err, done.err
    assert "CHORUS_ORCHESTRATOR_PORT" in done.err
    streamed = chorus(
        stack, "run", "duet", "-i", "hi", ports={**stack.ports, "orchestrator": nobody}
    )
    assert streamed.code == 4 and "stack is not running" in streamed.err, streamed


def test_run_of_an_unknown_template_lists_the_templates(stack: Stack) -> None:
    done = chorus(stack, "run", "nosuch", "--input", "hello")
    assert done.code == 4, done
    assert "INVALID_ARGUMENT" in done.err
    assert "spec.template" in done.err and "nosuch" in done.err, done.err
    for name in ("duet", "assistant", "crypto-analysts", "article-pipeline"):
        assert name in done.err, done.err


@pytest.mark.parametrize("command", [["run", "duet", "-i", "x"], ["watch", "some-run"]])
def test_on_interrupt_is_a_choice(stack: Stack, command: list[str]) -> None:
    done = chorus(stack, *command, "--on-interrupt", "bogus")
    assert done.code == 2, done
    assert "bogus" in done.err and "ask" in done.err and "detach" in done.err, done.err


def test_piped_runs_list_prints_every_value_whole(stack: Stack, finished_run: str) -> None:
    done = chorus(stack, "runs", "list")
    assert done.code == 0, done
    header, *rows = done.out.splitlines()
    assert header.split("\t") == ["id", "status", "template", "turns", "created", "input"]
    row = next(r.split("\t") for r in rows if r.startswith(finished_run))
    assert row[1:4] == ["completed", "duet", "2"], row
    assert row[5] == LONG_INPUT
    assert "…" not in done.out


def test_runs_list_as_json_is_the_list_runs_reply(stack: Stack, finished_run: str) -> None:
    for flags in (["--output", "json"], ["--json"]):
        done = chorus(stack, "runs", "list", *flags)
        assert done.code == 0, done
        runs = json.loads(done.out)["runs"]
        found = next(r for r in runs if r["id"] == finished_run)
        assert found["status"] == "RUN_STATUS_COMPLETED"
        assert found["spec"]["input"] == LONG_INPUT
    bad = chorus(stack, "runs", "list", "--output", "yaml")
    assert bad.code == 2 and "yaml" in bad.err, bad


def test_runs_export_has_format_export_time_and_complete(stack: Stack, finished_run: str) -> None:
    done = chorus(stack, "runs", "export", finished_run)
    assert done.code == 0, done
    export = json.loads(done.out)
    assert list(export) == ["format", "exportTime", "complete", "run", "messages", "events"]
    assert export["format"] == "chorus.run-export.v1"
    assert export["exportTime"].endswith("Z") and export["complete"] is True
    assert export["run"]["id"] == finished_run
    seqs = [int(e["seq"]) for e in export["events"]]
    assert seqs == list(range(1, len(seqs) + 1)) and "runCompleted" in export["events"][-1]
    assert len(export["messages"]) >= 2
    missing = chorus(stack, "runs", "export", str(uuid.uuid4()))
    assert missing.code == 4 and "NOT_FOUND" in missing.err, missing
    malformed = chorus(stack, "runs", "export", "no-such-run")
    assert malformed.code == 4 and "run_id: must be a UUID" in malformed.err, malformed
