"""Game of 24: combine the given numbers with + - * / to reach the target.

The gold answer and the canonical program come from the same solver source text
(`SOLVER_SOURCE`, executed here and embedded in the program), so the program prints
exactly the gold expression.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any, Callable

from r1ci_jax.tasks.base import Example
from r1ci_jax.tasks.checkers import score_game24
from r1ci_jax.tasks.synthetic.base import SyntheticTask, require

SOLVER_SOURCE = '''\
from fractions import Fraction

def solve24(numbers, target):
    def search(items):
        if len(items) == 1:
            return items[0][1] if items[0][0] == target else None
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                (a, x), (b, y) = items[i], items[j]
                rest = [items[k] for k in range(len(items)) if k not in (i, j)]
                options = [(a + b, f"({x}+{y})"), (a - b, f"({x}-{y})"), (a * b, f"({x}*{y})")]
                if b != 0:
                    options.append((a / b, f"({x}/{y})"))
                for option in options:
                    found = search(rest + [option])
                    if found:
                        return found
        return None
    found = search([(Fraction(n), str(n)) for n in numbers])
    if found and len(numbers) > 1:
        found = found[1:-1]
    return found
'''

_namespace: dict[str, Any] = {}
exec(compile(SOLVER_SOURCE, "<game24 solver>", "exec"), _namespace)  # noqa: S102 - our own constant source
_solve24: Callable[[list[int], int], str | None] = _namespace["solve24"]


@functools.lru_cache(maxsize=65536)
def solve24(numbers: tuple[int, ...], target: int = 24) -> str | None:
    """An expression using each of `numbers` once that equals `target`, or None."""
    return _solve24(list(numbers), target)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Game24(SyntheticTask):
    """"Make 24 from 4, 7, 8, 8 using + - * / and parentheses, each number once." (solvable only)."""

    count: int = 4
    max_number: int = 13
    target: int = 24
    name: str = "game24"

    def __post_init__(self) -> None:
        require(self.name, 2 <= self.count <= 4, f"count must be in [2, 4], got {self.count}")
        require(self.name, 1 <= self.max_number <= 100, f"max_number must be in [1, 100], got {self.max_number}")

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {"numbers": sorted(rng.randint(1, self.max_number) for _ in range(self.count)), "target": self.target}

    def question(self, params: dict[str, Any]) -> str:
        numbers = ", ".join(map(str, params["numbers"]))
        return f"Make {params['target']} from {numbers} using + - * / and parentheses, each number once."

    def solve(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        expression = solve24(tuple(params["numbers"]), params["target"])
        if expression is None:
            return None
        return expression, dict(params)

    def score(self, answer: str | None, example: Example) -> float:
        return score_game24(answer, example.meta["numbers"], example.meta["target"])

    def solution_code(self, example: Example) -> str:
        return f"{SOLVER_SOURCE}\nprint(solve24({example.meta['numbers']!r}, {example.meta['target']}))"
