"""The simulator: determinism, text, timing, tools, autogen's orchestration prompts, every fault."""

from __future__ import annotations

import json
import re
import time

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from provider_helpers import expect_status, kinds, request, user

from chorus.core.testing import wait_for
from chorus.v1 import chat_pb2, provider_service_pb2

pytestmark = pytest.mark.timeout(60)

Fault = chat_pb2.SimulatorFault
FINISH = provider_service_pb2.FinishReason


def _sim(**options) -> chat_pb2.SimulatorOptions:  # type: ignore[no-untyped-def]
    return chat_pb2.SimulatorOptions(**options)


def _text(events: list[provider_service_pb2.StreamChatResponse]) -> str:
    return "".join(e.text_delta.text for e in events if e.HasField("text_delta"))


def _fault(kind: int, **fields) -> chat_pb2.SimulatorOptions:  # type: ignore[no-untyped-def]
    return _sim(fault=Fault(kind=kind, **fields), output_tokens=20)


def _assistant(content: str, name: str = "") -> provider_service_pb2.ChatMessage:
    return provider_service_pb2.ChatMessage(
        role=chat_pb2.ROLE_ASSISTANT, content=content, name=name
    )


def _system(content: str) -> provider_service_pb2.ChatMessage:
    return provider_service_pb2.ChatMessage(role=chat_pb2.ROLE_SYSTEM, content=content)


# --- determinism and text -------------------------------------------------------------------


async def test_same_seed_and_request_give_the_same_stream(provider) -> None:
    p = await provider()
    req = request("How do tides work on the Atlantic coast?", simulator=_sim(seed=42))
    first, second = await p.collect(req), await p.collect(req)
    assert first == second
    other = await p.collect(
        request("How do tides work on the Atlantic coast?", simulator=_sim(seed=43))
    )
    assert _text(other) != _text(first)


async def test_seed_zero_is_derived_from_the_messages(provider) -> None:
    p = await provider()
    a1 = await p.collect(request("Compare solar and wind power costs"))
    a2 = await p.collect(request("Compare solar and wind power costs"))
    b = await p.collect(request("Plan a vegetable garden for spring"))
    assert _text(a1) == _text(a2)
    assert _text(a1) != _text(b)


async def test_text_is_plain_english_about_the_topic_and_not_an_echo(provider) -> None:
    p = await provider()
    prompt = "Explain how interest rates affect bitcoin prices in Europe"
    text = _text(await p.collect(request(prompt, simulator=_sim(seed=7))))

    assert prompt not in text
    assert "lorem" not in text.lower()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    assert len(sentences) >= 2 and all(s[0].isupper() for s in sentences)
    assert any(topic in text for topic in ("interest rates", "bitcoin prices", "Europe"))


async def test_output_tokens_gives_exactly_that_many_text_deltas_and_usage(provider) -> None:
    p = await provider()
    events = await p.collect(request("Write about rivers", simulator=_sim(output_tokens=137)))

    assert kinds(events).count("text_delta") == 137
    assert kinds(events)[-2:] == ["usage", "finish"]
    usage = events[-2].usage
    assert (usage.output_tokens, usage.estimated) == (137, False)
    # sim-1's nominal prices: 0.10 $/Mtok input, 0.40 output
    assert usage.cost_usd == pytest.approx((usage.input_tokens * 0.10 + 137 * 0.40) / 1e6)
    assert events[-1].finish.reason == FINISH.FINISH_REASON_STOP


async def test_max_output_tokens_cuts_the_reply_with_finish_length(provider) -> None:
    p = await provider()
    events = await p.collect(
        request("Write about rivers", max_output_tokens=5, simulator=_sim(output_tokens=50))
    )
    assert kinds(events).count("text_delta") == 5
    assert (events[-1].finish.reason, events[-1].finish.raw_reason) == (
        FINISH.FINISH_REASON_LENGTH,
        "length",
    )


async def test_a_stop_sequence_cuts_the_text(provider) -> None:
    p = await provider()
    full = _text(
        await p.collect(request("Describe a forest", simulator=_sim(seed=3, output_tokens=60)))
    )
    stop = full.split(" ")[5]
    events = await p.collect(
        request("Describe a forest", stop=[stop], simulator=_sim(seed=3, output_tokens=60))
    )
    assert _text(events) == full[: full.index(stop)]
    assert events[-1].finish.raw_reason == "stop_sequence"


async def test_time_to_first_token_and_tokens_per_second_are_respected(provider) -> None:
    p = await provider()
    req = request(
        "Tell me about owls",
        simulator=_sim(
            time_to_first_token=duration_pb2.Duration(nanos=200_000_000),
            tokens_per_second=50,
            output_tokens=11,
        ),
    )
    started = time.monotonic()
    first_text = None
    async for event in p.stream(req):
        if event.HasField("text_delta") and first_text is None:
            first_text = time.monotonic() - started
    total = time.monotonic() - started
    assert first_text is not None and first_text >= 0.2
    assert total >= 0.2 + 10 / 50  # 11 tokens at 50/s: 10 intervals after the first


async def test_sim_reasoning_thinks_before_it_answers(provider) -> None:
    p = await provider()
    events = await p.collect(request("Why is the sky blue?", model="sim-reasoning"))
    k = kinds(events)
    assert k[1] == "reasoning_delta"
    assert k.index("text_delta") > max(i for i, x in enumerate(k) if x == "reasoning_delta")
    usage = events[-2].usage
    assert 0 < usage.reasoning_tokens < usage.output_tokens


async def test_list_models_names_the_simulator_models(provider) -> None:
    p = await provider()
    listed = await p.stub.ListModels(provider_service_pb2.ListModelsRequest(provider="simulator"))
    assert [m.ref.model for m in listed.models] == ["sim-1", "sim-fast", "sim-reasoning"]


# --- tools ----------------------------------------------------------------------------------


def _calculator() -> provider_service_pb2.ToolDefinition:
    params = struct_pb2.Struct()
    params.update(
        {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "Arithmetic"}},
            "required": ["expression"],
        }
    )
    return provider_service_pb2.ToolDefinition(
        name="calculator", description="Evaluate an arithmetic expression", parameters=params
    )


def _weather() -> provider_service_pb2.ToolDefinition:
    params = struct_pb2.Struct()
    params.update(
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days", "unit"],
        }
    )
    return provider_service_pb2.ToolDefinition(
        name="get_weather", description="Weather forecast for a city", parameters=params
    )


async def test_offered_tools_get_a_call_with_schema_valid_arguments_then_text_after_the_result(
    provider,
) -> None:
    p = await provider()
    ask = user("What will the weather be in Lisbon over the next 3 days?")
    events = await p.collect(request(ask, tools=[_calculator(), _weather()]))

    assert kinds(events)[1] == "tool_call_start"
    assert kinds(events)[-3:] == ["tool_call_end", "usage", "finish"]
    call = events[-3].tool_call_end.call
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Lisbon", "days": 3, "unit": "celsius"}
    assert (
        "".join(e.tool_call_delta.arguments_delta for e in events if e.HasField("tool_call_delta"))
        == call.arguments
    )
    assert events[-1].finish.reason == FINISH.FINISH_REASON_TOOL_CALLS

    answer = await p.collect(
        request(
            ask,
            provider_service_pb2.ChatMessage(role=chat_pb2.ROLE_ASSISTANT, tool_calls=[call]),
            provider_service_pb2.ChatMessage(
                role=chat_pb2.ROLE_TOOL, tool_call_id=call.id, content="Sunny, 24 C"
            ),
            tools=[_calculator(), _weather()],
        )
    )
    assert "tool_call_start" not in kinds(answer)
    assert "The get_weather tool returned Sunny, 24 C." in _text(answer)


async def test_the_calculator_gets_the_expression_from_the_message(provider) -> None:
    p = await provider()
    events = await p.collect(request("What is (12 + 30) * 2?", tools=[_weather(), _calculator()]))
    call = events[-3].tool_call_end.call
    assert (call.name, json.loads(call.arguments)) == (
        "calculator",
        {"expression": "(12 + 30) * 2"},
    )


async def test_tool_choice_none_answers_in_text(provider) -> None:
    p = await provider()
    none = provider_service_pb2.ToolChoice(mode=provider_service_pb2.ToolChoice.MODE_NONE)
    events = await p.collect(request("What is 2+2?", tools=[_calculator()], tool_choice=none))
    assert "tool_call_start" not in kinds(events)


# --- autogen orchestration prompts ----------------------------------------------------------


async def test_selector_prompt_is_answered_with_one_candidate_name(provider) -> None:
    selector = pytest.importorskip("autogen_agentchat.teams._group_chat._selector_group_chat")
    import inspect

    template = (
        inspect.signature(selector.SelectorGroupChat.__init__).parameters["selector_prompt"].default
    )
    prompt = template.format(
        roles="writer: writes drafts\ncritic: reviews drafts\neditor: polishes",
        participants=str(["writer", "critic", "editor"]),
        history="user: Write a haiku about autumn.\n\nwriter: Leaves fall...\n\ncritic: Good start.",
    )
    p = await provider()
    text = _text(await p.collect(request(_system(prompt))))
    assert text == "editor"  # the candidate who has not spoken yet

    retry = await p.collect(
        request(
            _system(prompt),
            _assistant("writer and critic"),
            user(
                "Expected exactly one name to be mentioned. Please select only one from: ['writer', 'critic']."
            ),
        )
    )
    assert _text(retry) in ("writer", "critic")


async def test_magentic_one_prompts_get_valid_facts_plan_ledger_and_final_answer(provider) -> None:
    prompts = pytest.importorskip("autogen_agentchat.teams._group_chat._magentic_one._prompts")
    task = "Compare the energy use of bitcoin and ethereum in 2024."
    team = "researcher: finds data\nanalyst: compares numbers"
    p = await provider()

    facts = _text(
        await p.collect(
            request(user(prompts.ORCHESTRATOR_TASK_LEDGER_FACTS_PROMPT.format(task=task)))
        )
    )
    for heading in (
        "GIVEN OR VERIFIED FACTS",
        "FACTS TO LOOK UP",
        "FACTS TO DERIVE",
        "EDUCATED GUESSES",
    ):
        assert heading in facts

    plan = _text(
        await p.collect(
            request(
                user(prompts.ORCHESTRATOR_TASK_LEDGER_FACTS_PROMPT.format(task=task)),
                _assistant(facts),
                user(prompts.ORCHESTRATOR_TASK_LEDGER_PLAN_PROMPT.format(team=team)),
            )
        )
    )
    assert "- researcher:" in plan and "- analyst:" in plan

    ledger_prompt = prompts.ORCHESTRATOR_PROGRESS_LEDGER_PROMPT.format(
        task=task, team=team, names="researcher, analyst"
    )
    full = prompts.ORCHESTRATOR_TASK_LEDGER_FULL_PROMPT.format(
        task=task, team=team, facts=facts, plan=plan
    )
    thread = [user(task), _assistant(full)]
    speakers = []
    for _ in range(4):
        ledger_text = _text(await p.collect(request(*thread, user(ledger_prompt))))
        ledger = prompts.LedgerEntry.model_validate(json.loads(ledger_text))
        if ledger.is_request_satisfied.answer:
            break
        assert not ledger.is_in_loop.answer and ledger.is_progress_being_made.answer
        speakers.append(ledger.next_speaker.answer)
        thread += [
            _assistant(ledger.instruction_or_question.answer),
            provider_service_pb2.ChatMessage(
                role=chat_pb2.ROLE_USER,
                content="Here are my findings.",
                name=ledger.next_speaker.answer,
            ),
        ]
    assert speakers == ["researcher", "analyst"]  # both spoke, then the request was satisfied
    assert ledger.is_request_satisfied.answer

    final = _text(
        await p.collect(
            request(*thread, user(prompts.ORCHESTRATOR_FINAL_ANSWER_PROMPT.format(task=task)))
        )
    )
    assert "bitcoin" in final and len(final.split()) > 20


async def test_a_requested_termination_word_ends_replies_once_the_talk_is_under_way(
    provider,
) -> None:
    p = await provider()
    system = _system('Debate politely. Say "TERMINATE" when the debate is over.')
    short = _text(await p.collect(request(system, "Cats or dogs?")))
    assert "TERMINATE" not in short
    long = _text(
        await p.collect(
            request(
                system,
                "Cats or dogs?",
                _assistant("Cats."),
                user("Dogs."),
                _assistant("Cats!"),
                user("Fine."),
            )
        )
    )
    assert long.endswith(" TERMINATE")


# --- faults ---------------------------------------------------------------------------------


async def test_error_fault_before_tokens_is_retried_until_its_attempts_are_used(provider) -> None:
    p = await provider(max_attempts=3)
    events = await p.collect(request("hi", simulator=_fault(Fault.KIND_ERROR, attempts=2)))
    assert events[0].start.retries == 2
    assert kinds(events)[-1] == "finish"
    assert len(p.app.simulator.received) == 3


async def test_error_fault_on_every_attempt_fails_with_its_code(provider) -> None:
    p = await provider(max_attempts=2)
    status = await expect_status(
        p.stream(
            request(
                "hi", simulator=_fault(Fault.KIND_ERROR, code=grpc.StatusCode.INTERNAL.value[0])
            )
        )
    )
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.info is not None and status.info.metadata["attempts"] == "2"


async def test_error_fault_after_tokens_ends_with_an_error_event(provider) -> None:
    p = await provider()
    events = await p.collect(request("hi", simulator=_fault(Fault.KIND_ERROR, after_tokens=4)))
    assert kinds(events) == ["start"] + ["text_delta"] * 4 + ["error"]
    error = events[-1].error
    assert (error.code, error.retryable) == (grpc.StatusCode.UNAVAILABLE.value[0], True)


async def test_rate_limit_fault_is_retried_after_its_retry_after(provider) -> None:
    p = await provider()
    retry_after = duration_pb2.Duration(nanos=300_000_000)
    started = time.monotonic()
    events = await p.collect(
        request("hi", simulator=_fault(Fault.KIND_RATE_LIMIT, retry_after=retry_after, attempts=1))
    )
    assert events[0].start.retries == 1
    assert time.monotonic() - started >= 0.3


async def test_rate_limit_fault_on_every_attempt_is_resource_exhausted_with_retry_info(
    provider,
) -> None:
    p = await provider(max_attempts=2)
    status = await expect_status(
        p.stream(
            request(
                "hi",
                simulator=_fault(
                    Fault.KIND_RATE_LIMIT, retry_after=duration_pb2.Duration(nanos=10_000_000)
                ),
            )
        )
    )
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.retry_delay_s == pytest.approx(0.01)


async def test_stall_fault_after_tokens_hits_the_idle_timeout(provider) -> None:
    p = await provider(idle_timeout_s=0.3)
    events = await p.collect(request("hi", simulator=_fault(Fault.KIND_STALL, after_tokens=3)))
    assert kinds(events) == ["start"] + ["text_delta"] * 3 + ["error"]
    assert events[-1].error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert p.app.simulator.active_streams == 0


async def test_stall_fault_before_tokens_hits_the_first_event_timeout_and_is_retried(
    provider,
) -> None:
    p = await provider(first_event_timeout_s=0.2)
    events = await p.collect(request("hi", simulator=_fault(Fault.KIND_STALL, attempts=1)))
    assert events[0].start.retries == 1


async def test_drop_fault_is_unavailable_and_never_retried(provider) -> None:
    p = await provider()
    events = await p.collect(request("hi", simulator=_fault(Fault.KIND_DROP, after_tokens=2)))
    assert kinds(events) == ["start", "text_delta", "text_delta", "error"]
    assert (events[-1].error.code, events[-1].error.retryable) == (
        grpc.StatusCode.UNAVAILABLE.value[0],
        False,
    )

    status = await expect_status(p.stream(request("hi", simulator=_fault(Fault.KIND_DROP))))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert len(p.app.simulator.received) == 2  # one attempt each


async def test_received_and_active_streams_let_tests_observe_a_cancellation(provider) -> None:
    p = await provider()
    call = p.stream(
        request("A long story please", simulator=_sim(tokens_per_second=20, output_tokens=500))
    )
    await call.read()
    assert p.app.simulator.active_streams == 1
    assert p.app.simulator.received[-1].messages[0].content == "A long story please"
    call.cancel()
    await wait_for(lambda: p.app.simulator.active_streams == 0, timeout=10)
