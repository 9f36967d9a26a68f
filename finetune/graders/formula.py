"""``multi`` graders' ``calculate_output``: a small arithmetic language, parsed with ``ast`` and walked — never
``eval``.

Allowed: numbers, the sub-graders' names, ``+ - * / ** %``, unary ``-``/``+``, parentheses and the functions
``min max abs sqrt log exp floor ceil round``. Everything is computed in floats (so ``9 ** 9 ** 9`` overflows at
once instead of building a huge integer); a formula is at most 1 000 characters.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping

MAX_LENGTH = 1000
FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "round": lambda x: float(round(x)),
}
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_STRUCTURE = (ast.BinOp, ast.UnaryOp, ast.Load, *_BINARY, *_UNARY)


class FormulaError(ValueError):
    pass


def parse(formula: object, names: Iterable[str]) -> ast.expr:
    """The checked tree of ``formula`` (any JSON value: a grader's ``calculate_output``) over the variables ``names``;
    FormulaError says what is wrong."""
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError("the formula is empty")
    if len(formula) > MAX_LENGTH:
        raise FormulaError(f"the formula is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(formula.strip(), mode="eval").body
    except SyntaxError as exc:
        raise FormulaError(f"the formula does not parse: {exc.msg}") from None
    allowed = set(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in allowed and node.id not in FUNCTIONS:
                raise FormulaError(f"unknown name '{node.id}' (graders: {', '.join(sorted(allowed)) or 'none'})")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise FormulaError(f"only {', '.join(FUNCTIONS)} may be called")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise FormulaError(f"{node.value!r} is not a number")
        elif not isinstance(node, _STRUCTURE):
            raise FormulaError(
                f"'{ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__}' is "
                "not allowed in a formula"
            )
    return tree


def evaluate(tree: ast.expr, values: Mapping[str, float]) -> float:
    """The formula's value; FormulaError on arithmetic errors (division by zero, overflow, log of 0, …)."""
    try:
        return float(_walk(tree, values))
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise FormulaError(f"the formula could not be computed: {exc}") from None


def _walk(node: ast.expr, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)  # parse() admits numbers only
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_walk(node.left, values), _walk(node.right, values))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_walk(node.operand, values))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return float(FUNCTIONS[node.func.id](*(_walk(a, values) for a in node.args)))
