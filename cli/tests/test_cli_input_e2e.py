"""Human in the loop with the `chorus` command against the real services (issue 21 item 4;
provider-svc with the simulator, history-svc on SQLite, orchestrator-svc, each a process on
port 0; the CLI a process, on a pseudo-terminal where it should ask):

* `chorus run assistant-approval -i "What is 17.5% of 2,340?"` asks `Approve? [y/N]`; `y`
  runs the calculator and the run completes (exit 0);
* without a terminal it prints how to answer and exits 6 while the run waits;
  `chorus runs input` approves / denies / gives text and the run goes on (`chorus watch`);
* the human editor of `article-pipeline-reviewed` answers notes at the prompt, then APPROVE;
* errors: a second answer (7), a stale input id (7), the wrong kind (2, or 4 from the
  service), an unknown run (4); cancel while waiting (`watch` then exits 3).
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import CHORUS_COMMAND, Done, TtyChorus, simulated_backend

QUESTION = "What is 17.5% of 2,340?"
TOPIC = "Why cats sleep so much"


@dataclass
class Stack:
    env: dict[str, str]
    cwd: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli-input-stack")
    with simulated_backend(tmp) as b:
        cwd = tmp / "cwd"
        cwd.mkdir()
        yield Stack(
            {
                "CHORUS_ORCHESTRATOR_ADDRESS": b.orchestrator,
                "CHORUS_HISTORY_ADDRESS": b.history,
                "CHORUS_PROVIDER_ADDRESS": b.provider,
                "CHORUS_USER": "dev",
                "CHORUS_INTERNAL_TOKEN": "",
                "COLUMNS": "200",
            },
            cwd,
        )


def chorus(stack: Stack, *args: str, stdin: str = "") -> Done:
    """`chorus ARGS`, stdin a pipe (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")} | stack.env
    done = subprocess.run(
        [*CHORUS_COMMAND, *args],
        env=env,
        cwd=stack.cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Done(done.returncode, done.stdout, done.stderr)


def tty(stack: Stack, *args: str) -> TtyChorus:
    """`chorus ARGS` with stdin a terminal (it asks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")} | stack.env
    return TtyChorus(*args, env=env, cwd=str(stack.cwd))


def waiting_run(stack: Stack, template: str, text: str) -> tuple[str, str]:
    """Start a run that stops at its first request for input (not asked: no terminal);
    returns (run id, input id)."""
    done = chorus(stack, "run", template, "--input", text)
    assert done.code == 6, done
    found = re.search(r"chorus runs input (\S+) --input-id (\S+)", done.out)
    assert found, done.out
    return found.group(1), found.group(2)


def test_run_asks_for_approval_at_the_terminal_and_completes(stack: Stack) -> None:
    proc = tty(stack, "run", "assistant-approval", "--input", QUESTION)
    try:
        out = proc.expect("Approve? [y/N]")
        assert "⏸ waiting for approval of calculator(" in out, out
        assert "assistant wants to call calculator" in out, out
        proc.send("y\n")
        done = proc.wait(120)
    finally:
        proc.kill()
    assert done.code == 0, done
    assert "✔ approved by dev" in done.out, done.out
    assert "✓ calculator → " in done.out and "409.5" in done.out, done.out
    assert "final answer" in done.out


def test_without_a_terminal_the_run_waits_and_runs_input_approves(stack: Stack) -> None:
    run_id, input_id = waiting_run(stack, "assistant-approval", QUESTION)
    listed = chorus(stack, "runs", "list")
    row = next(r.split("\t") for r in listed.out.splitlines() if r.startswith(run_id))
    assert row[1:3] == ["awaiting_input", "assistant-approval"], row
    shown = chorus(stack, "runs", "show", run_id)
    assert shown.code == 0 and '"status": "RUN_STATUS_AWAITING_INPUT"' in shown.out, shown
    assert f"--input-id {input_id} --approve" in shown.err, shown.err
    wrong_kind = chorus(stack, "runs", "input", run_id, "--text", "yes")
    assert wrong_kind.code == 2 and "use --approve or --deny" in wrong_kind.err, wrong_kind
    service_says = chorus(stack, "runs", "input", run_id, "--input-id", input_id, "--text", "y")
    assert service_says.code == 4 and "INVALID_ARGUMENT" in service_says.err, service_says
    stale = chorus(stack, "runs", "input", run_id, "--input-id", "turn99-1", "--approve")
    assert stale.code == 7 and "FAILED_PRECONDITION" in stale.err, stale
    assert f"input {'turn99-1'} of run {run_id} is not pending" in stale.err, stale.err

    approved = chorus(stack, "runs", "input", run_id, "--approve", "--request-id", "once")
    assert approved.code == 0, approved
    assert approved.out.startswith(f"✔ approved by dev — input {input_id} of run {run_id}")
    repeat = chorus(stack, "runs", "input", run_id, "--input-id", input_id, "--approve",
                    "--request-id", "once")  # fmt: skip
    assert (
        repeat.code == 0
        and repeat.out.split("(seq")[1].split(")")[0]
        == (approved.out.split("(seq")[1].split(")")[0])
    ), (approved, repeat)
    second = chorus(stack, "runs", "input", run_id, "--input-id", input_id, "--deny")
    assert second.code == 7 and "first answer wins" in second.err, second

    watched = chorus(stack, "watch", run_id)
    assert watched.code == 0, watched
    assert "✔ approved by dev" in watched.out and "409.5" in watched.out, watched.out
    ended = chorus(stack, "runs", "input", run_id, "--approve")
    assert ended.code == 7 and "is not waiting for input (status completed)" in ended.err


def test_runs_input_deny_reaches_the_agent_as_the_tools_failure(stack: Stack) -> None:
    run_id, _ = waiting_run(stack, "assistant-approval", QUESTION)
    denied = chorus(stack, "runs", "input", run_id, "--deny", "--reason", "not today")
    assert denied.code == 0, denied
    assert denied.out.startswith("✖ denied by dev: not today"), denied.out
    watched = chorus(stack, "watch", run_id)
    assert watched.code == 0, watched
    assert "✗ calculator → not run: denied by dev: not today" in watched.out, watched.out


def test_the_human_editor_answers_notes_then_approve_at_the_terminal(stack: Stack) -> None:
    proc = tty(stack, "run", "article-pipeline-reviewed", "--input", TOPIC)
    try:
        out = proc.expect("(your answer; end it with an empty line or Ctrl-D)")
        assert "editor asks you:\nReview the draft above. Answer APPROVE" in out, out
        proc.send("Make it shorter.\nAnd funnier.\n\n")
        proc.expect("(your answer; end it", timeout=120, count=2)
        proc.send("APPROVE\n\n")
        done = proc.wait(120)
    finally:
        proc.kill()
    assert done.code == 0, done
    assert done.out.count("✔ answered by dev") == 2, done.out
    assert "editor ▸ Make it shorter.\nAnd funnier." in done.out, done.out
    assert "final answer" in done.out


def test_runs_input_text_from_stdin_lets_the_pipeline_publish(stack: Stack) -> None:
    run_id, input_id = waiting_run(stack, "article-pipeline-reviewed", TOPIC)
    wrong_kind = chorus(stack, "runs", "input", run_id, "--approve")
    assert wrong_kind.code == 2 and "use --text" in wrong_kind.err, wrong_kind
    done = chorus(stack, "runs", "input", run_id, "--text", "-", stdin="APPROVE\n")
    assert done.code == 0, done
    assert done.out.startswith(f"✔ answered by dev — input {input_id} of run {run_id}")
    watched = chorus(stack, "watch", run_id)
    assert watched.code == 0 and "editor ▸ APPROVE" in watched.out, watched


def test_cancel_while_waiting_ends_the_run(stack: Stack) -> None:
    run_id, input_id = waiting_run(stack, "assistant-approval", QUESTION)
    cancelled = chorus(stack, "runs", "cancel", run_id, "--reason", "changed my mind")
    assert cancelled.code == 0 and "(status cancelled)" in cancelled.out, cancelled
    watched = chorus(stack, "watch", run_id)
    assert watched.code == 3, watched
    assert "run cancelled by dev: changed my mind" in watched.out
    late = chorus(stack, "runs", "input", run_id, "--input-id", input_id, "--approve")
    assert late.code == 7, late
    missing = chorus(stack, "runs", "input", str(uuid.uuid4()), "--approve")
    assert missing.code == 4 and "NOT_FOUND" in missing.err, missing
