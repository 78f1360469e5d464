"""The tool registry and the built-in tools: safe, deterministic, bounded."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from autogen_core import CancellationToken
from autogen_core.tools import FunctionTool
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.orchestrator.tools import calculator, clock, market, python_exec
from chorus.orchestrator.tools.registry import (
    BoundedWorkbench,
    ToolContext,
    ToolEntry,
    ToolRegistry,
    builtin_tools,
    entry_point_tools,
)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("sqrt(16) / 2", "2"),
        ("2 ** 10", "1024"),
        ("-7 // 2", "-4"),
        ("7 % 4", "3"),
        ("factorial(5)", "120"),
        ("round(pi, 3)", "3.142"),
        ("max(1, 5, 3) - min(4, 2)", "3"),
        ("1 / 4", "0.25"),
    ],
)
def test_calculator_computes_arithmetic(expression: str, value: str) -> None:
    assert calculator.calculator(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('id')", "unknown function"),
        ("().__class__", "unsupported syntax"),
        ("open", "unknown name"),
        ("'a' * 3", "unsupported literal"),
        ("[1, 2]", "unsupported syntax"),
        ("lambda: 1", "unsupported syntax"),
        ("9 ** 9 ** 9", "exponents are limited"),
        ("10 ** 5000", "bits"),
        ("factorial(10 ** 4)", "factorial"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "sqrt"),
        ("2 +", "malformed"),
        ("1" * 1001, "limited to 1000"),
        ("abs(x=1)", "keyword"),
    ],
)
def test_calculator_rejects_anything_but_bounded_arithmetic(expression: str, message: str) -> None:
    with pytest.raises(calculator.CalculatorError, match=message):
        calculator.evaluate(expression)


_ints = st.integers(min_value=-1000, max_value=1000)


@st.composite
def _expressions(draw: Any, depth: int = 0) -> str:
    if depth > 3 or draw(st.booleans()):
        return str(draw(_ints))
    op = draw(st.sampled_from(["+", "-", "*"]))
    return f"({draw(_expressions(depth + 1))} {op} {draw(_expressions(depth + 1))})"


@given(_expressions())
@settings(max_examples=200, deadline=None)
def test_calculator_agrees_with_python_on_integer_arithmetic(expression: str) -> None:
    assert calculator.evaluate(expression) == eval(expression)  # the generated text is safe


def test_current_time_answers_in_the_asked_zone_and_rejects_unknown_zones() -> None:
    assert "+01:00" in clock.current_time("Europe/Paris") or "+02:00" in clock.current_time(
        "Europe/Paris"
    )
    assert "+00:00" in clock.current_time("UTC")
    with pytest.raises(ValueError, match="unknown time zone"):
        clock.current_time("Mars/Olympus")


def test_market_data_is_deterministic_per_symbol_and_well_formed() -> None:
    btc = json.loads(market.market_data("BTC"))
    assert btc == json.loads(market.market_data("btc"))
    assert btc["symbol"] == "BTC" and btc["price_usd"] == 64000.0
    assert btc["market_cap_usd"] > btc["volume_24h_usd"] > 0
    assert json.loads(market.market_data("ETH"))["price_usd"] != btc["price_usd"]
    assert market.closes("XYZ", 30) == market.closes("XYZ", 30)
    tech = json.loads(market.technical_indicators("SOL", 30))
    assert 0 <= tech["rsi_14"] <= 100 and tech["trend"] in ("up", "down")
    assert tech["low_usd"] <= tech["last_close_usd"] <= tech["high_usd"]
    with pytest.raises(ValueError, match="invalid symbol"):
        market.market_data("not a symbol!")
    with pytest.raises(ValueError, match="days"):
        market.closes("BTC", 1000)


def test_price_chart_is_a_valid_svg_document() -> None:
    root = ET.fromstring(market.price_chart_svg("ETH", 14))
    assert root.tag.endswith("svg")
    polyline = next(e for e in root.iter() if e.tag.endswith("polyline"))
    assert len(polyline.attrib["points"].split()) == 14


async def test_run_python_runs_code_in_a_child_and_kills_it_at_the_timeout() -> None:
    out = await python_exec.run_python("print(6 * 7)", timeout_s=10)
    assert out == "exit code 0\n42\n"
    out = await python_exec.run_python("import sys; sys.exit('bad')", timeout_s=10)
    assert out.startswith("exit code 1") and "bad" in out
    with pytest.raises(TimeoutError):
        await python_exec.run_python("while True: pass", timeout_s=0.3)


def test_code_execution_is_offered_only_when_enabled() -> None:
    assert "run_python" not in [t.name for t in builtin_tools()]
    assert "run_python" in [t.name for t in builtin_tools(code_execution=True)]
    assert "run_python" not in ToolRegistry.load(entry_points=False)


ENTRY_POINTS = """[chorus.tools]
shout = chorus_ep_tools:shout
echo_tool = chorus_ep_tools:ECHO
calculator = chorus_ep_tools:shout
broken = chorus_ep_tools:does_not_exist
bad-name! = chorus_ep_tools:shout
"""
MODULE = '''
from autogen_core.tools import FunctionTool


def shout(text: str) -> str:
    """Return the text in capitals."""
    return text.upper()


def _echo(text: str) -> str:
    return text


ECHO = FunctionTool(_echo, description="Echo the text.", name="echo_tool")
'''


def test_entry_point_tools_load_functions_and_tool_objects_and_skip_broken_ones(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "chorus_ep_tools-1.0.dist-info"
    dist.mkdir()
    (tmp_path / "chorus_ep_tools.py").write_text(MODULE)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chorus-ep-tools\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))

    loaded = {e.name: e for e in entry_point_tools()}
    assert set(loaded) == {"shout", "echo_tool", "calculator"}
    assert loaded["shout"].origin == "chorus-ep-tools"
    registry = ToolRegistry.load()
    assert registry.get("calculator").origin == "builtin"  # built-ins win
    ctx = ToolContext("run", "agent", _no_artifacts)
    (shout,) = registry.build(["shout"], ctx)
    assert shout.schema["parameters"]["required"] == ["text"]
    assert asyncio.run(shout.run_json({"text": "hi"}, CancellationToken())) == "HI"


async def _no_artifacts(name: str, mime: str, data: bytes) -> None:
    raise AssertionError("no artifacts expected")


async def test_the_workbench_bounds_tool_time_and_result_size() -> None:
    async def slow() -> str:
        """Sleep."""
        await asyncio.sleep(30)
        return "done"

    def big() -> str:
        """A lot of text."""
        return "x" * 100_000

    def boom() -> str:
        """Raise."""
        raise RuntimeError("kaput")

    bench = BoundedWorkbench(
        [FunctionTool(f, description=f.__doc__ or "") for f in (slow, big, boom)], timeout_s=0.1
    )
    result = await bench.call_tool("slow", {})
    assert result.is_error and "timed out after 0.1 s" in result.to_text()
    result = await bench.call_tool("big", {})
    assert not result.is_error and result.to_text().endswith("[truncated]")
    assert len(result.to_text()) < 70_000
    result = await bench.call_tool("boom", {})
    assert result.is_error and "kaput" in result.to_text()


def test_a_registry_keeps_the_first_tool_of_a_name() -> None:
    def one() -> str:
        """One."""
        return "1"

    tool = FunctionTool(one, description="One.")
    first = ToolEntry("one", "first", lambda _ctx: tool)
    second = ToolEntry("one", "second", lambda _ctx: tool, origin="elsewhere")
    registry = ToolRegistry([first, second])
    assert registry.names() == ["one"] and registry.get("one") is first


async def test_the_gate_answers_for_calls_that_ran_or_were_denied_without_running_them() -> None:
    """Issue 21: a redone step's completed call returns its recorded result, a denied call
    its denial (as an error); only a call the gate lets through runs."""
    ran: list[str] = []

    def echo(text: str) -> str:
        """Echo the text."""
        ran.append(text)
        return text

    instead = {"c1": ("recorded 42", False), "c2": ("not run: denied by alice", True)}
    bench = BoundedWorkbench(
        [FunctionTool(echo, description="Echo.")], timeout_s=5, gate=instead.get
    )
    token = CancellationToken()
    recorded = await bench.call_tool("echo", {"text": "a"}, token, call_id="c1")
    denied = await bench.call_tool("echo", {"text": "b"}, token, call_id="c2")
    fresh = await bench.call_tool("echo", {"text": "c"}, token, call_id="c3")
    assert (recorded.to_text(), recorded.is_error) == ("recorded 42", False)
    assert (denied.to_text(), denied.is_error) == ("not run: denied by alice", True)
    assert (fresh.to_text(), fresh.is_error) == ("c", False)
    assert ran == ["c"]
