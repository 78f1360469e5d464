"""Charts (issue 23 item 7): the crypto-analysts template's technical analyst attaches a
price chart whenever it analyses an asset — its `technical_indicators` tool attaches the
chart of the window it computed, so a model that calls only that tool (the simulator
included) still delivers one."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from orchestrator_helpers import BOTH_BACKENDS, RunClient, Stack, agent, spec, team

from chorus.orchestrator.tools import market
from chorus.v1 import run_pb2, team_pb2

SINGLE = team_pb2.TEAM_KIND_SINGLE


def artifacts(events: list[run_pb2.RunEvent]) -> list[run_pb2.RunEvent]:
    return [e for e in events if e.HasField("artifact")]


@BOTH_BACKENDS
async def test_the_crypto_templates_example_input_produces_a_price_chart(
    stack: Stack, alice: RunClient
) -> None:
    example = {t.name: t.example_input for t in await alice.templates()}["crypto-analysts"]
    events = await alice.stream(spec(template="crypto-analysts", input=example))
    assert events[-1].HasField("run_completed")
    charts = artifacts(events)
    assert charts, "no chart"
    chart = charts[0]
    assert chart.agent == "technical_analyst"
    assert chart.artifact.mime_type == "image/svg+xml"
    assert chart.artifact.name == "BTC-30d.svg"
    assert ET.fromstring(chart.artifact.data).tag.endswith("svg")
    # the chart came from the technical analyst's tool call, inside its turn
    started = next(
        e for e in events if e.HasField("agent_started") and e.agent == "technical_analyst"
    )
    finished = next(
        e
        for e in events
        if e.HasField("agent_finished") and e.agent == "technical_analyst" and e.seq > started.seq
    )
    assert started.seq < chart.seq < finished.seq


@BOTH_BACKENDS
async def test_technical_indicators_attach_the_chart_of_their_window(
    stack: Stack, alice: RunClient
) -> None:
    analyst = agent("tech", tools=["technical_indicators"])
    events = await alice.stream(
        spec(team_spec=team(SINGLE, analyst), input="Technical picture of ETH over 30 days")
    )
    finished = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
    assert finished and finished[0].success
    args = json.loads(finished[0].call.arguments)
    symbol, days = args["symbol"], args.get("days", 30)
    name = market.chart_name(symbol, days)
    assert json.loads(finished[0].result)["chart"] == name
    [chart] = artifacts(events)
    assert chart.artifact.name == name
    assert chart.artifact.data == market.price_chart_svg(symbol, days)
