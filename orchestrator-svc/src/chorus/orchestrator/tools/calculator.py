"""The `calculator` tool: arithmetic on a parsed syntax tree — never `eval`.

Accepted: numbers, `+ - * / // % **`, unary `+ -`, parentheses, the constants `pi`, `e`,
`tau` and the functions in `FUNCTIONS`. Everything else (names, attributes, subscripts,
comprehensions, strings …) is rejected before anything is computed. Sizes are bounded so a
model cannot make the process compute `9**9**9`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

MAX_EXPRESSION_CHARS = 1000
"""Longest expression accepted."""
MAX_INT_BITS = 4096
"""Largest integer (in bits) any step may produce."""
MAX_EXPONENT = 10_000
"""Largest absolute exponent of `**`."""
MAX_FACTORIAL = 1000
"""Largest argument of `factorial`."""

Number = int | float


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be computed (message says why)."""


def _factorial(n: Number) -> int:
    if not float(n).is_integer() or n < 0 or n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial needs an integer 0..{MAX_FACTORIAL}")
    return math.factorial(int(n))


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": _factorial,
}
"""Functions an expression may call."""

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
"""Names an expression may use."""

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _checked(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"an intermediate result exceeds {MAX_INT_BITS} bits")
    return value


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"unsupported literal {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id not in CONSTANTS:
            raise CalculatorError(f"unknown name {node.id!r}")
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponents are limited to ±{MAX_EXPONENT}")
        if (
            isinstance(node.op, ast.Pow)
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and left.bit_length() * right > MAX_INT_BITS
        ):
            raise CalculatorError(f"the power exceeds {MAX_INT_BITS} bits")
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else "?"
            raise CalculatorError(f"unknown function {name!r}; allowed: {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise CalculatorError("keyword arguments are not supported")
        args = [_eval(a) for a in node.args]
        try:
            return _checked(FUNCTIONS[node.func.id](*args))
        except (ValueError, TypeError, OverflowError) as exc:
            if isinstance(exc, CalculatorError):
                raise
            raise CalculatorError(f"{node.func.id}: {exc}") from None
    raise CalculatorError(f"unsupported syntax: {type(node).__name__}")


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression.

    Raises:
        CalculatorError: the expression is too long, malformed, uses anything outside the
            allowed grammar, or its result is too large / undefined.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expressions are limited to {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"malformed expression: {exc.msg}") from None
    return _eval(tree)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression, e.g. `(2 + 3) * sqrt(16) / 7`.

    Supports + - * / // % ** and parentheses, the constants pi, e and tau and the functions
    abs, round, min, max, sqrt, exp, log, log10, log2, sin, cos, tan, asin, acos, atan,
    floor, ceil and factorial.
    """
    value = evaluate(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
