"""The server-side tool registry: which tools agents may name in `AgentSpec.tools`.

Clients reference tools by name only; a tool's code always comes from the server: the
built-ins below, `run_python` when code execution is enabled in settings, and third-party
tools that installed packages declare in the `chorus.tools` entry-point group. An entry
point may name an autogen `BaseTool` instance, a `BaseTool` subclass (instantiated without
arguments), or a plain (async) function with type hints and a docstring (wrapped in a
`FunctionTool`); the entry point's name is the tool's name.

Tools are built per run (`ToolRegistry.build`) so a tool can emit artifacts into its own
run through `ToolContext`.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from autogen_core import CancellationToken
from autogen_core.tools import (
    BaseTool,
    FunctionTool,
    StaticWorkbench,
    TextResultContent,
    ToolResult,
)

from chorus.core import tracing
from chorus.core.logging import get_logger
from chorus.orchestrator.tools import calculator, clock, market, python_exec

log = get_logger("chorus.orchestrator.tools")

ENTRY_POINT_GROUP = "chorus.tools"
"""Entry-point group of third-party tools."""
MAX_RESULT_CHARS = 64 * 1024
"""Longest tool result passed to the model and recorded in `tool_call_finished`."""
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""Valid tool names (the provider contract's `ToolDefinition.name`)."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may use of the run that calls it.

    Attributes:
        run_id: the run.
        agent: the calling agent's name.
        emit_artifact: `await emit_artifact(name, mime_type, data)` adds an `artifact` event.
    """

    run_id: str
    agent: str
    emit_artifact: Callable[[str, str, bytes], Awaitable[None]]


ToolFactory = Callable[[ToolContext], BaseTool[Any, Any]]


@dataclass(frozen=True)
class ToolEntry:
    """One registered tool.

    Attributes:
        name: the name agents use.
        description: one line for listings.
        factory: builds the tool for one agent of one run.
        origin: `builtin` or the entry point's distribution.
        requires_approval: every call waits for a person's approval, whatever the team says
            (issue 21: `run_python` runs code).
    """

    name: str
    description: str
    factory: ToolFactory
    origin: str = "builtin"
    requires_approval: bool = False


def _summary(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _function_tool(func: Callable[..., Any], name: str) -> BaseTool[Any, Any]:
    return FunctionTool(func, description=_summary(func.__doc__) or name, name=name)


def _static(func: Callable[..., Any], name: str) -> ToolEntry:
    tool = _function_tool(func, name)
    return ToolEntry(name, tool.description, lambda _ctx: tool)


async def _attach_chart(ctx: ToolContext, symbol: str, days: int) -> str:
    """Attach the SVG price chart of `symbol` over `days` days to the run; its name."""
    data = market.price_chart_svg(symbol, days)
    name = market.chart_name(symbol, days)
    await ctx.emit_artifact(name, "image/svg+xml", data)
    return name


def _technical_indicators_entry() -> ToolEntry:
    def factory(ctx: ToolContext) -> BaseTool[Any, Any]:
        async def technical_indicators(symbol: str, days: int = 30) -> str:
            """Technical indicators of a crypto asset over the last `days` days (15..365) as
            JSON: simple moving averages (7 and `days`), RSI(14), daily volatility, high,
            low and trend; the price chart of the same days is attached to the run."""
            figures = json.loads(market.technical_indicators(symbol, days))
            # Whoever analyses an asset shows its chart (issue 23): attached here, so a
            # model that calls only this tool still delivers it.
            figures["chart"] = await _attach_chart(ctx, symbol, days)
            return json.dumps(figures)

        return _function_tool(technical_indicators, "technical_indicators")

    return ToolEntry(
        "technical_indicators",
        "Technical indicators of a crypto asset, with its price chart attached.",
        factory,
    )


def _price_chart_entry() -> ToolEntry:
    def factory(ctx: ToolContext) -> BaseTool[Any, Any]:
        async def price_chart(symbol: str, days: int = 30) -> str:
            """Draw a line chart of a crypto asset's daily closes over the last `days` days
            (2..365) and attach it to the run as an SVG artifact."""
            name = await _attach_chart(ctx, symbol, days)
            return f"chart {name} attached (image/svg+xml)"

        return _function_tool(price_chart, "price_chart")

    return ToolEntry(
        "price_chart", "Attach an SVG price chart of a crypto asset to the run.", factory
    )


def _run_python_entry(timeout_s: float) -> ToolEntry:
    async def run_python(code: str) -> str:
        """Run a Python 3 program and return its exit code and printed output. Print what
        you want to see."""
        return await python_exec.run_python(code, timeout_s=timeout_s)

    tool = _function_tool(run_python, "run_python")
    return ToolEntry("run_python", tool.description, lambda _ctx: tool, requires_approval=True)


def builtin_tools(*, code_execution: bool = False, code_timeout_s: float = 10.0) -> list[ToolEntry]:
    """The built-in tools (none needs a network); `run_python` only with `code_execution`."""
    entries = [
        _static(calculator.calculator, "calculator"),
        _static(clock.current_time, "current_time"),
        _static(market.market_data, "market_data"),
        _technical_indicators_entry(),
        _price_chart_entry(),
    ]
    if code_execution:
        entries.append(_run_python_entry(code_timeout_s))
    return entries


def _entry_from_object(name: str, obj: Any, origin: str) -> ToolEntry:
    if isinstance(obj, BaseTool):
        tool: BaseTool[Any, Any] = obj
        if tool.name != name:
            raise ValueError(f"tool object is named {tool.name!r}, entry point {name!r}")
        return ToolEntry(name, tool.description, lambda _ctx: tool, origin)
    if inspect.isclass(obj) and issubclass(obj, BaseTool):
        instance = cast(Any, obj)()  # a subclass with a no-argument constructor
        return _entry_from_object(name, instance, origin)
    if callable(obj):
        tool = _function_tool(obj, name)
        return ToolEntry(name, tool.description, lambda _ctx: tool, origin)
    raise TypeError(f"entry point {name!r} is neither a BaseTool nor a callable")


def entry_point_tools(group: str = ENTRY_POINT_GROUP) -> list[ToolEntry]:
    """Tools declared by installed distributions in `group`; broken ones are logged and skipped."""
    entries = []
    for ep in importlib.metadata.entry_points(group=group):
        origin = ep.dist.name if ep.dist is not None else ep.value
        if not TOOL_NAME.match(ep.name):
            log.warning("tool_entry_point_rejected", tool=ep.name, error="invalid tool name")
            continue
        try:
            entries.append(_entry_from_object(ep.name, ep.load(), origin))
        except Exception as exc:
            log.warning("tool_entry_point_failed", tool=ep.name, origin=origin, error=repr(exc))
    return entries


class ToolRegistry:
    """Tools by name. Built-ins win over entry points with the same name.

    Args:
        entries: the tools, in listing order.
    """

    def __init__(self, entries: Iterable[ToolEntry]) -> None:
        self._entries: dict[str, ToolEntry] = {}
        for entry in entries:
            if entry.name in self._entries:
                log.warning("tool_name_taken", tool=entry.name, origin=entry.origin)
                continue
            self._entries[entry.name] = entry

    @classmethod
    def load(
        cls,
        *,
        entry_points: bool = True,
        code_execution: bool = False,
        code_timeout_s: float = 10.0,
    ) -> ToolRegistry:
        """Built-ins, then the `chorus.tools` entry points when `entry_points`."""
        entries = builtin_tools(code_execution=code_execution, code_timeout_s=code_timeout_s)
        if entry_points:
            entries += entry_point_tools()
        registry = cls(entries)
        log.info("tools_loaded", tools=registry.names())
        return registry

    def names(self) -> list[str]:
        """Registered tool names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> ToolEntry | None:
        """The tool named `name`, or None."""
        return self._entries.get(name)

    def build(self, names: Sequence[str], ctx: ToolContext) -> list[BaseTool[Any, Any]]:
        """Instances of the named tools for one agent of one run.

        Raises:
            KeyError: an unknown name (specs are validated before, so this is a bug).
        """
        return [self._entries[name].factory(ctx) for name in names]


ToolGate = Callable[[str | None], tuple[str, bool] | None]
"""`gate(call_id)` → `(result text, is_error)` a tool call returns instead of running (a person
denied it, or the call already ran in a step being redone), or None to run it."""


class BoundedWorkbench(StaticWorkbench):
    """A `StaticWorkbench` with a per-call deadline, a bounded result size and an optional
    gate (issue 21: a denied call returns the denial as an error result, and a call that ran
    before the run parked returns its recorded result; neither runs).

    A tool that raises, times out or returns too much gives an error or truncated
    `ToolResult`; it never fails the run (the agent sees the error text).
    """

    def __init__(
        self, tools: list[BaseTool[Any, Any]], *, timeout_s: float, gate: ToolGate | None = None
    ) -> None:
        super().__init__(tools)
        self._timeout_s = timeout_s
        self._gate = gate

    async def call_tool(
        self,
        name: str,
        arguments: Any = None,
        cancellation_token: CancellationToken | None = None,
        call_id: str | None = None,
    ) -> ToolResult:
        if not tracing.enabled():
            return await self._call_tool(name, arguments, cancellation_token, call_id)
        attributes = {
            tracing.GEN_AI_OPERATION_NAME: "execute_tool",
            tracing.GEN_AI_TOOL_NAME: name,
            tracing.GEN_AI_TOOL_TYPE: "function",
        }
        if call_id:
            attributes[tracing.GEN_AI_TOOL_CALL_ID] = call_id
        if tracing.capture_content():
            attributes[tracing.GEN_AI_TOOL_CALL_ARGUMENTS] = json.dumps(arguments, default=str)
        with tracing.span(f"execute_tool {name}", attributes=attributes) as span:
            result = await self._call_tool(name, arguments, cancellation_token, call_id)
            if span is not None:
                if result.is_error:
                    span.set_attribute(tracing.ERROR_TYPE, "tool_error")
                    span.set_status(tracing.trace.Status(tracing.trace.StatusCode.ERROR))
                if tracing.capture_content():
                    span.set_attribute(tracing.GEN_AI_TOOL_CALL_RESULT, result.to_text())
            return result

    async def _call_tool(
        self,
        name: str,
        arguments: Any,
        cancellation_token: CancellationToken | None,
        call_id: str | None,
    ) -> ToolResult:
        instead = self._gate(call_id) if self._gate is not None else None
        if instead is not None:
            text, is_error = instead
            return ToolResult(
                name=name, result=[TextResultContent(content=text)], is_error=is_error
            )
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await super().call_tool(name, arguments, cancellation_token, call_id)
        except TimeoutError:
            return ToolResult(
                name=name,
                result=[
                    TextResultContent(content=f"tool {name} timed out after {self._timeout_s:g} s")
                ],
                is_error=True,
            )
        text = result.to_text()
        if len(text) > MAX_RESULT_CHARS:
            return ToolResult(
                name=name,
                result=[TextResultContent(content=text[:MAX_RESULT_CHARS] + "\n[truncated]")],
                is_error=result.is_error,
            )
        return result
