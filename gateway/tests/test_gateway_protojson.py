"""proto3 JSON of run events and bodies: events encode as json_format, parse errors name the
field, SSE frames have the documented shape."""

from __future__ import annotations

import orjson
import pytest
from google.protobuf import json_format, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.core.errors import InvalidArgument
from chorus.gateway import protojson, sse
from chorus.v1 import run_pb2

texts = st.text(max_size=40)


@st.composite
def events(draw: st.DrawFn) -> run_pb2.RunEvent:
    ev = run_pb2.RunEvent(
        run_id=draw(st.sampled_from(["", "6f1c0d5e-1111-4c1e-9a55-000000000001"])),
        seq=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        agent=draw(st.sampled_from(["", "Ada", "Blaise ü"])),
    )
    if draw(st.booleans()):
        ev.time.seconds = draw(st.integers(min_value=0, max_value=253402300799))
        ev.time.nanos = draw(st.sampled_from([0, 1_000_000, 123_456_000, 999_999_999, 7]))
    kind = draw(
        st.sampled_from(
            ["text_delta", "reasoning_delta", "progress", "agent_started", "agent_finished"]
        )
    )
    if kind == "text_delta":
        ev.text_delta.text = draw(texts)
    elif kind == "reasoning_delta":
        ev.reasoning_delta.text = draw(texts)
    elif kind == "progress":
        ev.progress.turn = draw(st.integers(0, 2**31 - 1))
        ev.progress.max_turns = draw(st.integers(0, 2**31 - 1))
    elif kind == "agent_started":
        ev.agent_started.turn = draw(st.integers(-(2**31), 2**31 - 1))
    else:
        ev.agent_finished.turn = draw(st.integers(0, 100))
    return ev


@settings(max_examples=300, deadline=None)
@given(events())
def test_event_json_equals_json_format(event: run_pb2.RunEvent) -> None:
    assert protojson.event_dict(event) == json_format.MessageToDict(event)
    # byte for byte: the same keys in the same order
    assert protojson.event_json(event) == orjson.dumps(json_format.MessageToDict(event))


@settings(max_examples=500, deadline=None)
@given(
    st.integers(min_value=-62135596800, max_value=253402300799),
    st.integers(min_value=0, max_value=999_999_999) | st.sampled_from([0, 5_000_000, 7_000]),
)
def test_timestamp_text_equals_protobufs(seconds: int, nanos: int) -> None:
    ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert protojson.timestamp_json(seconds, nanos) == ts.ToJsonString()


def test_the_deltas_written_by_hand_have_one_field() -> None:
    """`event_dict` writes text and reasoning deltas itself: a field added to either in the
    contract must be added there too (this fails first)."""
    for name in ("text_delta", "reasoning_delta"):
        payload = run_pb2.RunEvent.DESCRIPTOR.fields_by_name[name].message_type
        assert [f.name for f in payload.fields] == ["text"]
    assert [f.name for f in run_pb2.RunEvent.DESCRIPTOR.fields if f.number < 10] == [
        "run_id",
        "seq",
        "time",
        "agent",
    ]


def test_a_terminal_event_is_proto3_json() -> None:
    ev = run_pb2.RunEvent(run_id="r", seq=9)
    ev.run_completed.final_answer = "done"
    ev.run_completed.agents.extend(["Ada", "Blaise"])
    ev.run_completed.usage.output_tokens = 12
    assert protojson.event_dict(ev) == {
        "runId": "r",
        "seq": "9",
        "runCompleted": {
            "finalAnswer": "done",
            "agents": ["Ada", "Blaise"],
            "usage": {"outputTokens": "12"},
        },
    }


def test_sse_frame_has_event_id_and_one_data_line() -> None:
    ev = run_pb2.RunEvent(run_id="r", seq=17, agent="Ada")
    ev.text_delta.text = "line one\nline two\r\n"
    frame = sse.encode_event(ev)
    lines = frame.split(b"\n")
    assert lines[0] == b"event: text_delta"
    assert lines[1] == b"id: 17"
    assert lines[2].startswith(b"data: ")
    assert orjson.loads(lines[2][6:])["textDelta"]["text"] == "line one\nline two\r\n"
    assert frame.endswith(b"\n\n") and frame.count(b"\n") == 4


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (
            {"team": {"agents": [{"name": "a", "temperature": "hot"}]}},
            "team.agents[0].temperature",
            "hot",
        ),
        ({"team": {"agents": [{"nam": "a"}]}}, "team.agents[0].nam", "unknown field"),
        ({"maxTurns": "many"}, "maxTurns", "many"),
        ({"onDisconnect": "SOMETIMES"}, "onDisconnect", "SOMETIMES"),
        ({"input": 5}, "input", "string"),
        ({"colour": "blue"}, "colour", "unknown field"),
        ([1, 2], "body", "JSON object"),
    ],
)
def test_parse_errors_name_the_field(body: object, field: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        protojson.parse(body, run_pb2.RunSpec())
    assert [f for f, _ in info.value.violations] == [field]
    assert says in info.value.violations[0][1]


def test_parse_accepts_camel_and_snake_case() -> None:
    spec = protojson.parse({"maxTurns": 3, "conversation_id": "c"}, run_pb2.RunSpec())
    assert spec.max_turns == 3 and spec.conversation_id == "c"
