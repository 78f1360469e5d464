"""The simulator answers on topic, in the agent's role, with tool arguments taken from the
input (issue 23 item 11): what a new user sees first on `make run`. Real gRPC server."""

from __future__ import annotations

import json
import re

import pytest
from google.protobuf import struct_pb2
from provider_helpers import kinds, request, user

from chorus.v1 import chat_pb2, provider_service_pb2

pytestmark = pytest.mark.timeout(60)

ChatMessage = provider_service_pb2.ChatMessage

ASSISTANT_PROMPT = (
    "You are a helpful, precise assistant. Answer the user's latest message using the "
    "conversation so far. Use the calculator for any arithmetic and current_time for dates "
    "and times instead of guessing. Be concise."
)
TECHNICAL_PROMPT = (
    "You are a technical analyst. Whenever you analyse an asset, call technical_indicators "
    "for it (30 days unless asked otherwise): it returns trend, momentum (RSI) and volatility "
    "and attaches the asset's price chart to the run. Call price_chart only for a chart of "
    "another period."
)
ADA = (
    "You are Ada, a curious optimist, in a friendly debate with another bot called Blaise. "
    "Answer Blaise's last point in one or two sentences, then add one new idea."
)
BLAISE = (
    "You are Blaise, a careful skeptic, in a friendly debate with another bot called Ada. "
    "Answer Ada's last point in one or two sentences, then raise one risk or cost she missed."
)


def _tool(name: str, description: str, properties: dict, required: list[str]):  # type: ignore[no-untyped-def]
    params = struct_pb2.Struct()
    params.update({"type": "object", "properties": properties, "required": required})
    return provider_service_pb2.ToolDefinition(
        name=name, description=description, parameters=params
    )


CALCULATOR = _tool(
    "calculator",
    "Evaluate an arithmetic expression: + - * / ** %, parentheses, sqrt, round.",
    {"expression": {"type": "string"}},
    ["expression"],
)
CLOCK = _tool(
    "current_time",
    "The current date and time in an IANA time zone (e.g. Europe/Paris), ISO 8601.",
    {"timezone": {"type": "string", "default": "UTC"}},
    [],
)
SYMBOL = {"symbol": {"type": "string"}, "days": {"type": "integer", "default": 30}}
INDICATORS = _tool(
    "technical_indicators",
    "Technical indicators of a crypto asset over the last days: moving averages, RSI, "
    "volatility, trend; attaches the asset's price chart.",
    SYMBOL,
    ["symbol"],
)
CHART = _tool(
    "price_chart", "An SVG line chart of a crypto asset's closing prices.", SYMBOL, ["symbol"]
)


def _system(content: str) -> ChatMessage:
    return ChatMessage(role=chat_pb2.ROLE_SYSTEM, content=content)


def _text(events: list[provider_service_pb2.StreamChatResponse]) -> str:
    return "".join(e.text_delta.text for e in events if e.HasField("text_delta"))


def _calls(events: list[provider_service_pb2.StreamChatResponse]) -> list[chat_pb2.ToolCall]:
    return [e.tool_call_end.call for e in events if e.HasField("tool_call_end")]


async def test_the_assistant_example_calls_the_calculator_with_the_percentage_and_the_clock(
    provider,
) -> None:
    p = await provider()
    ask = user("What is 17.5% of 2,340, and what day of the week is it today?")
    events = await p.collect(request(_system(ASSISTANT_PROMPT), ask, tools=[CALCULATOR, CLOCK]))
    calls = _calls(events)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("calculator", {"expression": "0.175 * 2340"}),
        ("current_time", {}),
    ]
    assert kinds(events)[-1] == "finish"

    results = {"calculator": "409.5", "current_time": "2026-12-06T10:00:00+00:00 (Sunday, UTC)"}
    answer = _text(
        await p.collect(
            request(
                _system(ASSISTANT_PROMPT),
                ask,
                ChatMessage(role=chat_pb2.ROLE_ASSISTANT, tool_calls=calls),
                *(
                    ChatMessage(role=chat_pb2.ROLE_TOOL, tool_call_id=c.id, content=results[c.name])
                    for c in calls
                ),
                tools=[CALCULATOR, CLOCK],
            )
        )
    )
    assert "17.5% of 2,340 is 409.5" in answer, answer
    assert "Sunday" in answer and "returned 4" not in answer


@pytest.mark.parametrize(
    ("question", "expression"),
    [
        ("What is 17.5% of 2,340?", "0.175 * 2340"),
        ("How much is 12 percent of 1,250,000?", "0.12 * 1250000"),
        ("Compute 3,400 / 17 please", "3400 / 17"),
    ],
)
async def test_calculator_arguments_come_from_the_input(provider, question, expression) -> None:
    p = await provider()
    events = await p.collect(request(question, tools=[CLOCK, CALCULATOR]))
    assert [(c.name, json.loads(c.arguments)) for c in _calls(events)] == [
        ("calculator", {"expression": expression})
    ]


async def test_an_analyst_with_a_chart_tool_analysing_an_asset_calls_the_tool_its_prompt_names(
    provider,
) -> None:
    """The crypto-analysts technical analyst, instructed by MagenticOne's orchestrator."""
    p = await provider()
    instruction = ChatMessage(
        role=chat_pb2.ROLE_USER,
        name="MagenticOneOrchestrator",
        content="technical_analyst, please compute RSI, volatility and trend of an asset, "
        "for this request: Analyse BTC for a cautious investor and recommend a position size.",
    )
    task = user("Analyse BTC for a cautious investor and recommend a position size.")
    events = await p.collect(
        request(_system(TECHNICAL_PROMPT), task, instruction, tools=[INDICATORS, CHART])
    )
    assert [(c.name, json.loads(c.arguments)) for c in _calls(events)] == [
        ("technical_indicators", {"symbol": "BTC"})
    ]
    by_name = await p.collect(
        request(
            _system(TECHNICAL_PROMPT),
            user("Show me a chart of ethereum over the last quarter"),
            tools=[INDICATORS, CHART],
        )
    )
    assert [(c.name, json.loads(c.arguments)) for c in _calls(by_name)] == [
        ("price_chart", {"symbol": "ETH"})
    ]


async def test_debaters_answer_each_other_on_the_users_topic_in_sentences(provider) -> None:
    p = await provider()
    topic = user("Is remote work here to stay?")
    first = _text(await p.collect(request(_system(ADA), topic)))
    second = _text(
        await p.collect(
            request(_system(BLAISE), topic, ChatMessage(role=chat_pb2.ROLE_USER, content=first))
        )
    )
    for reply in (first, second):
        sentences = re.split(r"(?<=[.!?])\s+", reply)
        assert len(sentences) >= 3 and all(s[0].isupper() for s in sentences), reply
        assert reply.count("remote work") >= 2, reply
    first_words = " ".join(re.split(r"[.:;,]", first)[0].split()[:6])
    assert f"“{first_words}" in second and "Ada" in second.split("“")[0], second


@pytest.mark.parametrize(
    ("prompt", "shape"),
    [
        (
            "You are a researcher. List the key facts as short bullet points.",
            r"^Research notes on urban beekeeping:\n- ",
        ),
        (
            "You are an editor planning an article. Turn the notes into sections.",
            r"^Working title: Urban beekeeping.*\n1\. ",
        ),
        (
            "You are a writer. Write the article following the outline.",
            r"^Urban beekeeping, explained\n\n",
        ),
    ],
)
async def test_pipeline_roles_write_in_their_own_shape_about_the_topic(
    provider, prompt, shape
) -> None:
    p = await provider()
    text = _text(await p.collect(request(_system(prompt), user("Write about urban beekeeping"))))
    assert re.search(shape, text), text
    assert text.count("urban beekeeping") + text.count("Urban beekeeping") >= 3


async def test_magentic_one_ledger_instructs_the_next_member_with_its_task_and_the_request(
    provider,
) -> None:
    prompts = pytest.importorskip("autogen_agentchat.teams._group_chat._magentic_one._prompts")
    task = "Analyse BTC for a cautious investor and recommend a position size."
    team = (
        "market_analyst: Market analyst: looks up price, changes and volume of an asset "
        "and explains what they mean.\n"
        "technical_analyst: Technical analyst: computes moving averages, RSI and trend."
    )
    p = await provider()
    plan = _text(
        await p.collect(
            request(user(prompts.ORCHESTRATOR_TASK_LEDGER_PLAN_PROMPT.format(team=team)))
        )
    )
    assert (
        "- market_analyst: look up price, changes and volume of an asset and explain what "
        "they mean." in plan
    ), plan
    assert "- technical_analyst: compute moving averages, RSI and trend." in plan, plan
    ledger_prompt = prompts.ORCHESTRATOR_PROGRESS_LEDGER_PROMPT.format(
        task=task, team=team, names="market_analyst, technical_analyst"
    )
    raw = _text(await p.collect(request(user(task), user(ledger_prompt))))
    ledger = prompts.LedgerEntry.model_validate(json.loads(raw))
    assert ledger.next_speaker.answer == "market_analyst"
    assert ledger.instruction_or_question.answer == (
        "market_analyst, please look up price, changes and volume of an asset and explain "
        f"what they mean, for this request: {task}"
    )
    assert "market_analyst" in ledger.is_request_satisfied.reason
    assert not ledger.is_request_satisfied.answer
