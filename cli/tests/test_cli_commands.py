"""The `chorus` commands a new user types first, against real provider-svc, history-svc and
orchestrator-svc processes (embedded storage, the simulator at full speed), the CLI itself
run as a process whose output is a pipe (issue 23 item 10):

* it finds the stack on `CHORUS_*_PORT`, as `make run` binds it;
* "connection refused" says the stack is not running and how to start it;
* `chorus run nosuch` lists the templates; `--on-interrupt` is a choice;
* piped `chorus runs list` prints values whole (tab-separated), `--output json` the reply;
* `chorus runs export` has `format`, `exportTime` and `complete`, as the REST export;
* every other command's output and exit code, bad input included (issue 24 item 7): `models`,
  `watch`, `runs show` / `cancel` / `list --status` / `export -o` / `artifacts`,
  `conversations list` / `show`, `--model`, `--max-turns`, a run whose model has no
  credentials, and the exit codes of `--help` and of no command at all.
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
from cli_helpers import CHORUS_COMMAND, Done, simulated_backend

from chorus.core.testing import free_port

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
    with simulated_backend(tmp) as b:
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
        stdin=subprocess.DEVNULL,  # never a terminal: nothing is asked
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
    for service, command in (
        ("orchestrator", ["teams"]),
        ("provider", ["models"]),
        ("history", ["conversations", "list"]),
        ("orchestrator", ["runs", "input", str(uuid.uuid4()), "--approve"]),
    ):
        down = chorus(stack, *command, ports={**stack.ports, service: nobody})
        assert down.code == 4, (command, down)
        assert f"cannot reach {service} at 127.0.0.1:{nobody}" in down.err, (command, down.err)


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


def test_models_lists_the_simulator_with_its_capabilities(stack: Stack) -> None:
    done = chorus(stack, "models")
    assert done.code == 0, done
    header = done.out.splitlines()[1]
    for column in ("provider", "model", "tools", "reasoning", "context", "credentials"):
        assert column in header, done.out
    assert any(line.split()[1:2] == ["simulator"] for line in done.out.splitlines()), done.out


def test_watch_replays_a_finished_run_and_fails_not_found_for_an_unknown_one(
    stack: Stack, finished_run: str
) -> None:
    done = chorus(stack, "watch", finished_run)
    assert done.code == 0, done
    assert f"run {finished_run} started: duet" in done.out and "final answer" in done.out
    after = chorus(stack, "watch", finished_run, "--after", "1")
    assert after.code == 0 and "started: duet" not in after.out, after
    missing = chorus(stack, "watch", str(uuid.uuid4()))
    assert missing.code == 4 and "NOT_FOUND" in missing.err, missing
    negative = chorus(stack, "watch", finished_run, "--after", "x")
    assert negative.code == 2 and "--after" in negative.err, negative


def test_runs_show_prints_the_run_as_json(stack: Stack, finished_run: str) -> None:
    done = chorus(stack, "runs", "show", finished_run)
    assert done.code == 0, done
    run = json.loads(done.out)
    assert run["id"] == finished_run and run["status"] == "RUN_STATUS_COMPLETED"
    assert run["spec"]["template"] == "duet" and done.err == ""
    missing = chorus(stack, "runs", "show", str(uuid.uuid4()))
    assert missing.code == 4 and "NOT_FOUND" in missing.err, missing
    malformed = chorus(stack, "runs", "show", "nope")
    assert malformed.code == 4 and "INVALID_ARGUMENT" in malformed.err, malformed
    no_id = chorus(stack, "runs", "show")
    assert no_id.code == 2 and "Missing argument" in no_id.err, no_id


def test_runs_cancel_of_an_ended_run_says_so(stack: Stack, finished_run: str) -> None:
    done = chorus(stack, "runs", "cancel", finished_run, "--reason", "enough")
    assert done.code == 0, done
    assert done.out.strip().endswith("(status completed)"), done.out
    missing = chorus(stack, "runs", "cancel", str(uuid.uuid4()))
    assert missing.code == 4 and "NOT_FOUND" in missing.err, missing


def test_runs_list_filters_by_status(stack: Stack, finished_run: str) -> None:
    completed = chorus(stack, "runs", "list", "--status", "completed", "--limit", "50")
    assert completed.code == 0, completed
    assert finished_run in completed.out
    assert all(r.split("\t")[1] == "completed" for r in completed.out.splitlines()[1:])
    failed = chorus(stack, "runs", "list", "--status", "failed")
    assert failed.code == 0 and finished_run not in failed.out, failed
    bogus = chorus(stack, "runs", "list", "--status", "bogus")
    assert bogus.code == 2 and "unknown status 'bogus'" in bogus.err, bogus
    zero = chorus(stack, "runs", "list", "--limit", "0")
    assert zero.code == 2 and "--limit" in zero.err, zero
    # 80 columns: the input and the time are left out, no column is squeezed to nothing
    table = chorus(stack, "runs", "list", "--output", "table")
    assert table.code == 0, table
    row = next(line for line in table.out.splitlines() if finished_run in line)
    assert row.split() == ["│", finished_run, "│", "completed", "│", "duet", "│", "2", "│"], row
    assert "input" not in table.out and "created" not in table.out


def test_runs_export_to_a_file_and_artifacts_of_a_run_without_any(
    stack: Stack, finished_run: str
) -> None:
    target = stack.cwd / "run.json"
    done = chorus(stack, "runs", "export", finished_run, "-o", str(target))
    assert done.code == 0 and f"wrote {target}" in done.out.replace("\n", ""), done
    assert json.loads(target.read_text())["run"]["id"] == finished_run
    none = chorus(stack, "runs", "artifacts", finished_run, "-o", str(stack.cwd / "arts"))
    assert none.code == 0, none
    assert f"run {finished_run} has no artifacts" in none.out
    assert not (stack.cwd / "arts").exists()


def test_conversations_list_and_show(stack: Stack, finished_run: str) -> None:
    conversation = json.loads(chorus(stack, "runs", "show", finished_run).out)["conversationId"]
    listed = chorus(stack, "conversations", "list")
    assert listed.code == 0, listed
    header, *rows = listed.out.splitlines()
    assert header.split("\t") == ["id", "title", "team", "messages", "updated"]
    row = next(r.split("\t") for r in rows if r.startswith(conversation))
    assert row[2] == "duet" and int(row[3]) >= 3, row
    as_json = chorus(stack, "conversations", "list", "-O", "json")
    assert any(c["id"] == conversation for c in json.loads(as_json.out)["conversations"])
    shown = chorus(stack, "conversations", "show", conversation)
    assert shown.code == 0, shown
    assert LONG_INPUT[:40] in shown.out and "user: " in shown.out, shown.out
    missing = chorus(stack, "conversations", "show", str(uuid.uuid4()))
    assert missing.code == 4 and "NOT_FOUND" in missing.err, missing


def test_run_rejects_bad_options(stack: Stack) -> None:
    bad_model = chorus(stack, "run", "duet", "-i", "x", "--model", "Ada")
    assert bad_model.code == 2 and "AGENT=PROVIDER/MODEL" in bad_model.err, bad_model
    zero_turns = chorus(stack, "run", "duet", "-i", "x", "--max-turns", "0")
    assert zero_turns.code == 2 and "--max-turns" in zero_turns.err, zero_turns
    no_input = chorus(stack, "run", "duet")
    assert no_input.code == 2 and "--input" in no_input.err, no_input
    twice = chorus(stack, "run", "duet", "Tabs?", "--input", "Spaces?")
    assert twice.code == 2 and "give the run's input once" in twice.err, twice
    positional = chorus(stack, "run", "duet", "Tabs or spaces?", "--max-turns", "1")
    assert positional.code == 0 and "final answer" in positional.out, positional
    no_key = chorus(stack, "run", "duet", "-i", "x", "--model", "Ada=openai/gpt-4o-mini")
    assert no_key.code == 4 and "INVALID_ARGUMENT" in no_key.err, no_key
    assert "has no credentials configured" in no_key.err, no_key.err


def test_help_and_no_command(stack: Stack) -> None:
    helped = chorus(stack, "--help")
    assert helped.code == 0, helped
    for command in ("run", "watch", "runs", "conversations", "models", "teams"):
        assert command in helped.out
    runs_help = chorus(stack, "runs", "--help")
    assert runs_help.code == 0 and "input" in runs_help.out, runs_help
    nothing = chorus(stack)
    assert nothing.code == 2 and "Usage: chorus" in nothing.out + nothing.err, nothing
    unknown = chorus(stack, "frobnicate")
    assert unknown.code == 2 and "frobnicate" in unknown.err, unknown
