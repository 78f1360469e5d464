"""The web page's handling of `run_resumed` (static/app.js), run by node on the page's own
script: what events after `fromSeq` built — the interrupted turn's partial message — is
dropped from the transcript, a turn interrupted after a tool call goes back to that call,
and a notice is added; the turn that runs again renders as new. (The browser tests drive
the whole page when chromium is installed.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from typing import Any

import pytest

NODE = shutil.which("node")
APP_JS = resources.files("chorus.gateway") / "static" / "app.js"

HARNESS = r"""
const vm = require("vm");
const fs = require("fs");
const context = vm.createContext({
  document: { addEventListener() {}, getElementById() { return null; } },
  sessionStorage: { getItem() { return null; }, setItem() {} },
  console,
});
vm.runInContext(fs.readFileSync(process.argv[process.argv.length - 1], "utf8"), context);
const events = JSON.parse(fs.readFileSync(0, "utf8"));
vm.runInContext("model = newModel('r1');", context);
context.__events = events;
const out = vm.runInContext(`
  for (const [type, ev] of __events) apply(type, ev);
  JSON.stringify(model);
`, context);
process.stdout.write(out);
"""


def run_page(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The page's run model after applying `events` (type, proto3 JSON)."""
    if NODE is None:
        pytest.skip("node is not installed")
    done = subprocess.run(
        [NODE, "-e", HARNESS, str(APP_JS)],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(done.stdout)


def ev(seq: int, agent: str = "", **payload: Any) -> dict[str, Any]:
    return {"runId": "r1", "seq": str(seq), "agent": agent, **payload}


def started(seq: int) -> tuple[str, dict[str, Any]]:
    spec = {"template": "duet", "maxTurns": 4, "team": {"agents": [{"name": "Ada"}]}}
    return "run_started", ev(seq, runStarted={"run": {"spec": spec}})


def turn(first: int, agent: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    """A whole turn: agent_started, one delta per word, message_completed, agent_finished."""
    out: list[tuple[str, dict[str, Any]]] = [
        ("agent_started", ev(first, agent, agentStarted={"turn": 1}))
    ]
    for i, word in enumerate(text.split(" ")):
        out.append(("text_delta", ev(first + 1 + i, agent, textDelta={"text": word + " "})))
    seq = first + 1 + len(text.split(" "))
    message = {"message": {"content": text}}
    out.append(("message_completed", ev(seq, agent, messageCompleted=message)))
    out.append(("agent_finished", ev(seq + 1, agent, agentFinished={})))
    return out


def resumed(seq: int, from_seq: int, attempt: int = 2) -> tuple[str, dict[str, Any]]:
    body = {"attempt": attempt, "fromSeq": str(from_seq), "reason": "OWNER_LOST"}
    return "run_resumed", ev(seq, runResumed=body)


def texts(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["kind"], t.get("agent") or t["text"]) for t in model["turns"]]


def test_the_partial_message_after_from_seq_is_dropped_and_a_notice_shown() -> None:
    events = [started(1), *turn(2, "Ada", "tabs are fine")]  # seqs 2..7
    events += [
        ("agent_started", ev(8, "Blaise", agentStarted={"turn": 2})),
        ("text_delta", ev(9, "Blaise", textDelta={"text": "spaces, be"})),
        ("text_delta", ev(10, "Blaise", textDelta={"text": "cause"})),
        resumed(11, from_seq=7),
        *turn(12, "Blaise", "spaces win"),
    ]
    model = run_page(events)
    turns = [t for t in model["turns"] if t["kind"] == "turn"]
    assert [(t["agent"], t["text"]) for t in turns] == [
        ("Ada", "tabs are fine"),
        ("Blaise", "spaces win"),
    ]
    notes = [t for t in model["turns"] if t["kind"] == "note"]
    assert len(notes) == 1 and notes[0]["resumed"]
    assert "attempt 2" in notes[0]["text"] and "from event 7" in notes[0]["text"]
    assert texts(model)[1][0] == "note"  # the notice sits where the partial message was
    assert model["lastSeq"] == 16


def test_a_turn_interrupted_after_a_tool_call_goes_back_to_that_call() -> None:
    call = {"id": "c1", "name": "calculator", "arguments": '{"x": 1}'}
    events = [
        started(1),
        ("agent_started", ev(2, "Ada", agentStarted={"turn": 1})),
        ("tool_call_started", ev(3, "Ada", toolCallStarted={"call": call})),
        ("tool_call_finished", ev(4, "Ada", toolCallFinished={"call": call, "result": "2"})),
        ("text_delta", ev(5, "Ada", textDelta={"text": "The answer is"})),
        resumed(6, from_seq=4),
        ("text_delta", ev(7, "Ada", textDelta={"text": "It is 2."})),
    ]
    model = run_page(events)
    [ada] = [t for t in model["turns"] if t["kind"] == "turn"]
    assert ada["text"] == "It is 2."  # not "The answer isIt is 2."
    assert [(t["name"], t["result"], t["success"]) for t in ada["tools"]] == [
        ("calculator", "2", False)
    ]


def test_a_run_restarted_from_its_input_drops_every_turn() -> None:
    events = [
        started(1),
        ("agent_started", ev(2, "Ada", agentStarted={"turn": 1})),
        ("text_delta", ev(3, "Ada", textDelta={"text": "half a"})),
        resumed(4, from_seq=0),
        *turn(5, "Ada", "a whole answer"),
    ]
    model = run_page(events)
    assert [(t["kind"], t["text"]) for t in model["turns"]] == [
        ("note", model["turns"][0]["text"]),
        ("turn", "a whole answer"),
    ]
    assert model["status"] == "running"
