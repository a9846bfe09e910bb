"""Counting letters in long strings and sorting lists of numbers."""
from __future__ import annotations

import dataclasses
import random
import string
from typing import Any

from r1ci_jax.tasks.base import Example
from r1ci_jax.tasks.synthetic.base import SyntheticTask, require
from r1ci_jax.tasks.verifiers import score_list, score_numeric

_ORDERS = ("ascending", "descending", "random")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LetterCount(SyntheticTask):
    """"How many times does the letter 'r' appear in: <string>?" over `alphabet`."""

    length: int = 30
    alphabet: str = string.ascii_lowercase
    name: str = "letter_count"

    def __post_init__(self) -> None:
        require(self.name, 1 <= self.length <= 10_000, f"length must be in [1, 10000], got {self.length}")
        require(
            self.name,
            len(set(self.alphabet)) >= 2 and self.alphabet.isalpha(),
            f"alphabet must have at least 2 distinct letters, got {self.alphabet!r}",
        )

    def sample(self, rng: random.Random) -> dict[str, Any]:
        letters = sorted(set(self.alphabet))
        text = "".join(rng.choice(letters) for _ in range(self.length))
        return {"letter": rng.choice(letters), "text": text}

    def question(self, params: dict[str, Any]) -> str:
        return f"How many times does the letter '{params['letter']}' appear in: {params['text']}?"

    def solve(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(params["text"].count(params["letter"])), dict(params)

    def score(self, answer: str | None, example: Example) -> float:
        return score_numeric(answer, example.answer)

    def solution_code(self, example: Example) -> str:
        return f"print({example.meta['text']!r}.count({example.meta['letter']!r}))"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sorting(SyntheticTask):
    """"Sort in ascending order: 5, 3, 9." -> "[3, 5, 9]"; `order` may be random per example."""

    count: int = 8
    min_value: int = 0
    max_value: int = 999
    order: str = "ascending"
    name: str = "sorting"

    def __post_init__(self) -> None:
        require(self.name, 1 <= self.count <= 1000, f"count must be in [1, 1000], got {self.count}")
        require(
            self.name,
            self.min_value < self.max_value,
            f"min_value must be < max_value, got {self.min_value} and {self.max_value}",
        )
        require(self.name, self.order in _ORDERS, f"order must be one of {list(_ORDERS)}, got {self.order!r}")

    def sample(self, rng: random.Random) -> dict[str, Any]:
        order = self.order if self.order != "random" else rng.choice(_ORDERS[:2])
        values = [rng.randint(self.min_value, self.max_value) for _ in range(self.count)]
        return {"values": values, "descending": order == "descending"}

    def question(self, params: dict[str, Any]) -> str:
        order = "descending" if params["descending"] else "ascending"
        return f"Sort in {order} order: {', '.join(map(str, params['values']))}."

    def solve(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return str(sorted(params["values"], reverse=params["descending"])), dict(params)

    def score(self, answer: str | None, example: Example) -> float:
        return score_list(answer, example.answer)

    def solution_code(self, example: Example) -> str:
        reverse = ", reverse=True" if example.meta["descending"] else ""
        return f"print(sorted({example.meta['values']!r}{reverse}))"
