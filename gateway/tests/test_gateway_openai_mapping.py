"""`ResponseMapper` and `ChatMapper` on synthetic run logs: every branch of the run event →
OpenAI event mapping, each emitted event validated against the `openai` SDK's own types
(pydantic, so a missing or mistyped field fails), and the numbering a pure function of the
log (what exact resume relies on)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from google.protobuf import timestamp_pb2
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from chorus.gateway.openai_api import mapping
from chorus.v1 import chat_pb2, conversation_pb2, run_pb2, team_pb2

RUN_ID = "0b7d6a2e-1f0c-4c55-9a51-3f1b2c4d5e6f"
EVENT_TYPES = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in get_args(get_args(ResponseStreamEvent)[0])
}
"""The SDK's class of each Responses streaming event, by `type`."""
KNOWN_ONLY_TO_CHORUS = {"response.cancelled"}


def _run(**team: Any) -> run_pb2.Run:
    spec = run_pb2.RunSpec(
        template="duet",
        input="Topic",
        request_id=mapping.request_id("chorus/duet", "k" * 22, background=True),
        team=team_pb2.TeamSpec(
            kind=team_pb2.TEAM_KIND_ROUND_ROBIN,
            agents=[
                team_pb2.AgentSpec(
                    name="Ada",
                    system_prompt="A" + mapping.INSTRUCTIONS_MARKER + "Be brief.",
                    temperature=0.5,
                ),
                team_pb2.AgentSpec(
                    name="Blaise",
                    system_prompt="B" + mapping.INSTRUCTIONS_MARKER + "Be brief.",
                    temperature=0.5,
                ),
            ],
            **team,
        ),
    )
    return run_pb2.Run(
        id=RUN_ID,
        spec=spec,
        conversation_id="5c6a0a3e-0000-4000-8000-000000000001",
        create_time=timestamp_pb2.Timestamp(seconds=1_800_000_000),
    )


class Log:
    """Builds a run's event log, numbering seqs."""

    def __init__(self, run: run_pb2.Run) -> None:
        self.run = run
        self.events: list[run_pb2.RunEvent] = []

    def add(self, agent: str = "", **payload: Any) -> Log:
        event = run_pb2.RunEvent(run_id=RUN_ID, seq=len(self.events) + 1, agent=agent, **payload)
        event.time.seconds = 1_800_000_010
        self.events.append(event)
        return self


E = run_pb2.RunEvent


def _turn(log: Log, agent: str, *pieces: str, reasoning: str = "") -> None:
    log.add(agent, agent_started=E.AgentStarted(turn=1))
    if reasoning:
        log.add(agent, reasoning_delta=E.ReasoningDelta(text=reasoning))
    for piece in pieces:
        log.add(agent, text_delta=E.TextDelta(text=piece))
    message = conversation_pb2.Message(
        role=chat_pb2.ROLE_ASSISTANT, agent=agent, content="".join(pieces)
    )
    log.add(agent, message_completed=E.MessageCompleted(message=message))
    log.add(agent, agent_finished=E.AgentFinished(turn=1))


def _usage() -> chat_pb2.Usage:
    return chat_pb2.Usage(
        input_tokens=30, cached_input_tokens=4, output_tokens=12, reasoning_tokens=2
    )


def _map(log: Log) -> tuple[mapping.ResponseMapper, list[dict[str, Any]]]:
    mapper = mapping.ResponseMapper(RUN_ID, mapping.context_of(log.run), 1_800_000_000)
    out: list[dict[str, Any]] = []
    for event in log.events:
        out.extend(mapper.feed(event))
    for event in out:
        if event["type"] not in KNOWN_ONLY_TO_CHORUS:
            EVENT_TYPES[event["type"]].model_validate(event)  # the SDK is the judge
    Response.model_validate(mapper.response)
    return mapper, out


def _debate() -> Log:
    log = Log(_run()).add(run_started=E.RunStarted(run=_run()))
    _turn(log, "Ada", "Hello ", "there.", reasoning="Think first.")
    _turn(log, "Blaise", "Not ", "so ", "fast.")
    log.add(
        run_completed=E.RunCompleted(
            final_answer="Not so fast.", usage=_usage(), stop_reason="max_turns"
        )
    )
    return log


def test_a_debate_maps_to_openais_events_in_order():
    mapper, events = _map(_debate())
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:6] == [
        "response.output_item.added",  # reasoning
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
    ]
    assert types[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = Response.model_validate(events[-1]["response"])
    assert [(i.type, i.model_extra["agent"]) for i in final.output] == [
        ("reasoning", "Ada"),
        ("message", "Ada"),
        ("message", "Blaise"),
    ]
    assert final.output_text == "Hello there.Not so fast."
    assert final.output[0].summary[0].text == "Think first."
    assert final.usage.input_tokens == 30 and final.usage.input_tokens_details.cached_tokens == 4
    assert (
        final.usage.output_tokens_details.reasoning_tokens == 2 and final.usage.total_tokens == 42
    )
    assert final.instructions == "Be brief." and final.temperature == 0.5
    assert final.background is True and final.model == "chorus/duet"
    assert final.conversation.id == "conv_5c6a0a3e000040008000000000000001"
    assert mapper.ended


def test_numbering_is_a_pure_function_of_the_log():
    _, once = _map(_debate())
    _, again = _map(_debate())
    assert once == again
    log = _debate()
    mapper = mapping.ResponseMapper(RUN_ID, mapping.context_of(log.run), 1_800_000_000)
    fed_twice = [e for event in log.events + log.events for e in mapper.feed(event)]
    assert fed_twice == once  # events at or below the last seq are ignored


def test_a_message_without_deltas_is_reported_whole():
    log = Log(_run()).add(run_started=E.RunStarted(run=_run()))
    message = conversation_pb2.Message(role=chat_pb2.ROLE_ASSISTANT, content="Plan: 1, 2, 3.")
    log.add("orchestrator", message_completed=E.MessageCompleted(message=message))
    log.add(run_completed=E.RunCompleted(usage=_usage()))
    _, events = _map(log)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["Plan: 1, 2, 3."]


def test_tool_calls_become_function_call_items_with_their_output():
    log = Log(_run()).add(run_started=E.RunStarted(run=_run()))
    log.add("Ada", agent_started=E.AgentStarted(turn=1))
    call = chat_pb2.ToolCall(id="call_1", name="calculator", arguments='{"expression": "2+2"}')
    log.add("Ada", tool_call_started=E.ToolCallStarted(call=call))
    log.add("Ada", tool_call_finished=E.ToolCallFinished(call=call, result="4", success=True))
    bad = chat_pb2.ToolCall(id="call_2", name="calculator", arguments="{}")
    log.add("Ada", tool_call_started=E.ToolCallStarted(call=bad))
    log.add("Ada", tool_call_finished=E.ToolCallFinished(call=bad, result="error", success=False))
    log.add("Ada", text_delta=E.TextDelta(text="It is 4."))
    message = conversation_pb2.Message(role=chat_pb2.ROLE_ASSISTANT, content="It is 4.")
    log.add("Ada", message_completed=E.MessageCompleted(message=message))
    log.add(run_completed=E.RunCompleted(usage=_usage()))
    _, events = _map(log)
    final = Response.model_validate(events[-1]["response"])
    calls = [i for i in final.output if i.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments, c.status) for c in calls] == [
        ("call_1", "calculator", '{"expression": "2+2"}', "completed"),
        ("call_2", "calculator", "{}", "incomplete"),
    ]
    assert calls[0].model_extra["output"] == "4" and calls[0].model_extra["agent"] == "Ada"
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [d["arguments"] for d in done] == ['{"expression": "2+2"}', "{}"]
    assert final.output_text == "It is 4."


def test_a_resumed_run_closes_the_interrupted_items_incomplete():
    log = Log(_run()).add(run_started=E.RunStarted(run=_run()))
    log.add("Ada", agent_started=E.AgentStarted(turn=1))
    log.add("Ada", text_delta=E.TextDelta(text="Interrupt"))
    log.add(run_resumed=E.RunResumed(attempt=2, from_seq=1, reason="owner lost"))
    _turn(log, "Ada", "Again.")
    log.add(run_completed=E.RunCompleted(usage=_usage()))
    _, events = _map(log)
    final = Response.model_validate(events[-1]["response"])
    assert [(i.status, i.content[0].text) for i in final.output] == [
        ("incomplete", "Interrupt"),
        ("completed", "Again."),
    ]


@pytest.mark.parametrize(
    ("terminal", "kind", "status"),
    [
        (
            dict(run_failed=E.RunFailed(error=run_pb2.RunError(code=14, message="provider down"))),
            "response.failed",
            "failed",
        ),
        (
            dict(run_failed=E.RunFailed(error=run_pb2.RunError(code=8, message="slow down"))),
            "response.failed",
            "failed",
        ),
        (
            dict(run_cancelled=E.RunCancelled(cancellation=run_pb2.Cancellation(reason="stop"))),
            "response.cancelled",
            "cancelled",
        ),
    ],
)
def test_failed_and_cancelled_runs(terminal, kind, status):
    log = Log(_run()).add(run_started=E.RunStarted(run=_run()))
    log.add("Ada", agent_started=E.AgentStarted(turn=1))
    log.add("Ada", text_delta=E.TextDelta(text="Half"))
    log.add(**terminal)
    _, events = _map(log)
    assert events[-1]["type"] == kind
    final = Response.model_validate(events[-1]["response"])
    assert final.status == status and final.output[0].status == "incomplete"
    if status == "failed":
        expected = "rate_limit_exceeded" if "slow" in final.error.message else "server_error"
        assert final.error.code == expected


def test_max_turns_is_incomplete_only_for_a_team_that_ends_itself():
    run = _run(termination_text="TERMINATE")
    log = Log(run).add(run_started=E.RunStarted(run=run))
    _turn(log, "Ada", "Still talking.")
    log.add(run_completed=E.RunCompleted(usage=_usage(), stop_reason="max_turns"))
    _, events = _map(log)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_messages"}
    _, duet = _map(_debate())  # round robin without termination text: max turns is its end
    assert duet[-1]["type"] == "response.completed"


def test_chat_mapper_names_each_agent_and_sums_usage():
    chat = mapping.ChatMapper(RUN_ID, "chorus/duet", 1_800_000_000, named=True)
    chunks = [c for event in _debate().events for c in chat.feed(event)]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "**Ada**\nHello there.\n\n**Blaise**\nNot so fast."
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    usage = ChatCompletionChunk.model_validate(chat.usage_chunk()).usage
    assert usage.prompt_tokens == 30 and usage.completion_tokens == 12
    completion = ChatCompletion.model_validate(chat.completion())
    assert completion.choices[0].message.content == text


def test_request_id_round_trips_the_model_and_flags():
    run = _run()
    run.spec.request_id = mapping.request_id("simulator/sim-1", "x" * 22, background=False)
    context = mapping.context_of(run)
    assert context.model == "simulator/sim-1" and context.background is False
    assert len(mapping.request_id("p/" + "m" * 94, "x" * 22, background=True)) <= 128
