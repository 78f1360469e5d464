"""Boundaries: autogen messages → provider-svc requests, and template files → TeamTemplates."""

from __future__ import annotations

from pathlib import Path

import pytest
from autogen_core import FunctionCall
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import FunctionTool

from chorus.core.settings import ConfigurationError
from chorus.orchestrator.model_client import (
    add_usage,
    to_chat_messages,
    to_tool_choice,
    to_tool_definitions,
)
from chorus.orchestrator.teams import stop_reason
from chorus.orchestrator.templates import load_templates
from chorus.v1 import chat_pb2, team_pb2
from chorus.v1 import provider_service_pb2 as ps


def test_autogen_messages_map_to_chat_messages_with_roles_names_and_tool_calls() -> None:
    call = FunctionCall(id="call_1", name="calculator", arguments='{"expression": "1+1"}')
    messages = to_chat_messages(
        [
            SystemMessage(content="Be brief."),
            UserMessage(content="Add one and one.", source="user"),
            UserMessage(content="I agree.", source="Blaise"),
            AssistantMessage(content=[call], thought="Let me compute.", source="Ada"),
            FunctionExecutionResultMessage(
                content=[
                    FunctionExecutionResult(content="2", name="calculator", call_id="call_1"),
                    FunctionExecutionResult(content="bad", name="x", call_id="c2", is_error=True),
                ]
            ),
            AssistantMessage(content="It is 2.", source="Ada"),
        ]
    )
    assert [(m.role, m.content, m.name) for m in messages] == [
        (chat_pb2.ROLE_SYSTEM, "Be brief.", ""),
        (chat_pb2.ROLE_USER, "Add one and one.", "user"),
        (chat_pb2.ROLE_USER, "I agree.", "Blaise"),
        (chat_pb2.ROLE_ASSISTANT, "Let me compute.", "Ada"),
        (chat_pb2.ROLE_TOOL, "2", ""),
        (chat_pb2.ROLE_TOOL, "bad", ""),
        (chat_pb2.ROLE_ASSISTANT, "It is 2.", "Ada"),
    ]
    assert list(messages[3].tool_calls) == [
        chat_pb2.ToolCall(id="call_1", name="calculator", arguments='{"expression": "1+1"}')
    ]
    assert messages[4].tool_call_id == "call_1" and not messages[4].is_error
    assert messages[5].is_error


def test_tools_map_to_json_schema_definitions_and_tool_choices() -> None:
    def lookup(symbol: str, days: int = 7) -> str:
        """Look a symbol up."""
        return symbol

    tool = FunctionTool(lookup, description="Look a symbol up.")
    (definition,) = to_tool_definitions([tool])
    assert definition.name == "lookup" and definition.description == "Look a symbol up."
    params = dict(definition.parameters)
    assert params["type"] == "object" and list(params["required"]) == ["symbol"]
    assert to_tool_choice("required").mode == ps.ToolChoice.MODE_REQUIRED
    assert to_tool_choice("none").mode == ps.ToolChoice.MODE_NONE
    named = to_tool_choice(tool)
    assert named.mode == ps.ToolChoice.MODE_TOOL and named.tool_name == "lookup"


def test_usage_adds_up_including_costs_only_when_priced() -> None:
    total = chat_pb2.Usage()
    add_usage(total, chat_pb2.Usage(input_tokens=10, output_tokens=5, cost_usd=0.5))
    add_usage(total, chat_pb2.Usage(input_tokens=1, cached_input_tokens=1, estimated=True))
    assert (total.input_tokens, total.cached_input_tokens, total.output_tokens) == (11, 1, 5)
    assert total.estimated and total.cost_usd == 0.5
    unpriced = chat_pb2.Usage()
    add_usage(unpriced, chat_pb2.Usage(input_tokens=1))
    assert not unpriced.HasField("cost_usd")


@pytest.mark.parametrize(
    ("kind", "raw", "reason"),
    [
        (team_pb2.TEAM_KIND_ROUND_ROBIN, "Maximum number of turns 4 reached.", "max_turns"),
        (team_pb2.TEAM_KIND_ROUND_ROBIN, "Text 'TERMINATE' mentioned", "termination_text"),
        (team_pb2.TEAM_KIND_SEQUENTIAL, "Digraph execution is complete", "completed"),
        (team_pb2.TEAM_KIND_MAGENTIC_ONE, "Max rounds reached.", "max_turns"),
        (team_pb2.TEAM_KIND_MAGENTIC_ONE, "The report is written.", "completed"),
        (team_pb2.TEAM_KIND_SINGLE, "Maximum number of turns 1 reached.", "completed"),
        (team_pb2.TEAM_KIND_SELECTOR, None, "completed"),
    ],
)
def test_autogen_stop_messages_map_to_stop_reasons(kind: int, raw: str | None, reason: str) -> None:
    assert stop_reason(kind, raw) == reason


def test_a_broken_template_file_is_a_configuration_error(tmp_path: Path) -> None:
    good = tmp_path / "a.yaml"
    good.write_text("name: a\nteam: {kind: TEAM_KIND_SINGLE, agents: [{name: x}]}\n")
    assert load_templates([good])["a"].spec.kind == team_pb2.TEAM_KIND_SINGLE
    for text, message in [
        ("name: b\nteam: {kind: NOT_A_KIND}\n", "b.yaml"),
        ("name: b\nsurprise: 1\n", "unknown keys"),
        ("title: no name\n", "`name` is required"),
        ("name: [unclosed\n", "b.yaml"),
    ]:
        bad = tmp_path / "b.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigurationError, match=message):
            load_templates([good, bad])
    with pytest.raises(ConfigurationError, match="duplicate"):
        load_templates([good, good])
