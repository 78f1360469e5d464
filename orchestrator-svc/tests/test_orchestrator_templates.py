"""Every built-in template runs to completion offline, with a well-formed event log."""

from __future__ import annotations

import pytest
from orchestrator_helpers import BOTH_BACKENDS, RunClient, Stack, assert_well_formed, kinds, spec

from chorus.v1 import chat_pb2, run_pb2, team_pb2

TEMPLATES = ("duet", "assistant", "crypto-analysts", "article-pipeline")
"""The templates that run to completion unattended."""
ASKING_TEMPLATES = ("assistant-approval", "article-pipeline-reviewed")
"""The templates that ask a person (issue 21; test_orchestrator_inputs.py runs them)."""


async def test_list_team_templates_returns_the_built_ins_with_example_inputs(
    alice: RunClient,
) -> None:
    templates = {t.name: t for t in await alice.templates()}
    assert set(templates) == {*TEMPLATES, *ASKING_TEMPLATES}
    for t in templates.values():
        assert t.title and t.description and t.example_input and t.input_hint
        assert t.spec.agents and t.spec.kind != team_pb2.TEAM_KIND_UNSPECIFIED
    duet = templates["duet"].spec
    assert duet.kind == team_pb2.TEAM_KIND_ROUND_ROBIN
    assert len({a.model.model for a in duet.agents}) == 2  # two models stand for two providers
    assert templates["crypto-analysts"].spec.kind == team_pb2.TEAM_KIND_MAGENTIC_ONE
    assert templates["article-pipeline"].spec.kind == team_pb2.TEAM_KIND_SEQUENTIAL
    assert templates["assistant"].spec.kind == team_pb2.TEAM_KIND_SINGLE
    assert templates["assistant-approval"].spec.tools_requiring_approval
    assert [a.human for a in templates["article-pipeline-reviewed"].spec.agents] == [False, True]


@pytest.mark.parametrize("template", TEMPLATES)
@BOTH_BACKENDS
async def test_template_runs_to_completion_with_a_gapless_event_log(
    stack: Stack, alice: RunClient, template: str
) -> None:
    example = {t.name: t.example_input for t in await alice.templates()}[template]
    events = await alice.stream(spec(template=template, input=example))

    assert_well_formed(events)
    assert kinds(events)[-1] == "run_completed"
    completed = events[-1].run_completed
    assert completed.final_answer
    assert completed.usage.output_tokens > 0
    started = events[0].run_started.run
    assert started.spec.template == template and started.spec.team.agents
    agents = {a.name for a in started.spec.team.agents}
    assert set(completed.agents) <= agents and completed.agents

    k = kinds(events)
    assert "text_delta" in k and "message_completed" in k and "progress" in k
    turns = [e.agent_started.turn for e in events if e.WhichOneof("payload") == "agent_started"]
    assert turns == list(range(1, len(turns) + 1))
    assert k.count("agent_started") == k.count("agent_finished") == k.count("progress")
    # Every delta belongs to an agent whose turn is open.
    open_agent = None
    for e in events:
        kind = e.WhichOneof("payload")
        if kind == "agent_started":
            open_agent = e.agent
        elif kind == "agent_finished":
            open_agent = None
        elif kind == "text_delta":
            assert e.agent == open_agent
    if template in ("assistant", "crypto-analysts"):
        assert "tool_call_started" in k and "tool_call_finished" in k
        finished = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
        assert all(f.success and f.result for f in finished)

    # The stored log is the streamed one; the run record ended COMPLETED.
    history = stack.history_client(alice.user)
    assert await history.events(started.id) == events
    record = await history.record(started.id)
    assert record.status == run_pb2.RUN_STATUS_COMPLETED
    assert record.final_answer == completed.final_answer
    assert record.last_seq == events[-1].seq

    # The conversation holds the input, then every completed message.
    messages = await history.messages(started.conversation_id)
    assert messages[0].role == chat_pb2.ROLE_USER and messages[0].content == example
    completed_messages = [
        e.message_completed.message for e in events if e.HasField("message_completed")
    ]
    assert [m.content for m in messages[1:]] == [m.content for m in completed_messages]
    assert all(m.run_id == started.id for m in messages)
