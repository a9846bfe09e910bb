"""Task-specific checkers: Game of 24 expressions and calendar dates.

Both register under a name in `verifiers` ("game24", "date") so loaded data (a
SymBench game24 folder, say) can select them with `verifier=...`.
"""
from __future__ import annotations

import ast
import datetime as dt
import operator
import re
from fractions import Fraction
from typing import Sequence

from r1ci_jax.tasks.base import Example
from r1ci_jax.tasks.numbers import parse_number
from r1ci_jax.tasks.verifiers import register_verifier, score_numeric

_MAX_EXPRESSION_CHARS = 200
_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SYMBOLS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-", "[": "(", "]": ")", "{": "(", "}": ")"})


def evaluate_arithmetic(expression: str) -> tuple[Fraction, list[Fraction]] | None:
    """Exact value of an expression of + - * / and parentheses, and the numbers it uses.

    None for anything else (names, calls, powers, unary minus, division by zero).
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(expression.translate(_SYMBOLS).strip(), mode="eval")
    except SyntaxError:
        return None
    used: list[Fraction] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            used.append(Fraction(node.value))
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            return _BINARY_OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not allowed: {ast.dump(node)[:40]}")

    try:
        return walk(tree), used
    except (ValueError, ZeroDivisionError):
        return None


def score_game24(answer: str | None, numbers: Sequence[int], target: int = 24) -> float:
    """1.0 if `answer` uses exactly `numbers` (each once) with + - * / to make `target`.

    "expression = 24" is accepted when the right side is the target.
    """
    if answer is None:
        return 0.0
    expression = answer.strip().rstrip(".")
    if "=" in expression:
        left, _, right = expression.partition("=")
        if parse_number(right) != target:
            return 0.0
        expression = left
    result = evaluate_arithmetic(expression)
    if result is None:
        return 0.0
    value, used = result
    return 1.0 if value == target and sorted(used) == sorted(Fraction(n) for n in numbers) else 0.0


_DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%d %b %Y", "%A, %B %d, %Y")


def parse_date(text: object) -> dt.date | None:
    """A calendar date written as ISO (2021-03-05, 2021-3-5) or "March 5, 2021"."""
    if isinstance(text, dt.date):
        return text
    s = " ".join(str(text).split()).strip().rstrip(".")
    s = re.sub(r"^(\d{4}-\d{1,2}-\d{1,2})[ T]00:00(?::00)?$", r"\1", s)  # printed datetimes
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(s, fmt).date()
        except ValueError:
            continue
    return None


def score_date(answer: str | None, gold: object) -> float:
    """Same calendar date (any accepted spelling); a gold that is a number compares as one."""
    if answer is None:
        return 0.0
    gold_date = parse_date(gold)
    if gold_date is None:
        return score_numeric(answer, gold)
    return 1.0 if parse_date(answer) == gold_date else 0.0


def _game24_from_example(answer: str | None, example: Example) -> float:
    numbers = example.meta.get("numbers")
    if numbers is None:
        raise ValueError(f"example {example.id}: game24 verifier needs meta['numbers']")
    return score_game24(answer, numbers, example.meta.get("target", 24))


register_verifier("game24", _game24_from_example)
register_verifier("date", lambda answer, example: score_date(answer, example.answer))
