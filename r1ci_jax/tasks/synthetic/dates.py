"""Date arithmetic: a date N days after/before another, or the days between two dates."""
from __future__ import annotations

import dataclasses
import datetime as dt
import random
from typing import Any

from r1ci_jax.tasks.base import Example
from r1ci_jax.tasks.checkers import score_date
from r1ci_jax.tasks.synthetic.base import SyntheticTask, require

_OPS = ("after", "before", "between")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DateArithmetic(SyntheticTask):
    """"What date is 1234 days after 2021-03-15?" (ISO answers) or "How many days are
    there from 2021-03-15 to 2024-07-31?" (a count); `ops` picks which kinds appear."""

    max_days: int = 1000
    start_year: int = 1950
    end_year: int = 2050
    ops: tuple[str, ...] = _OPS
    name: str = "date_arithmetic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))  # YAML gives lists
        require(self.name, 1 <= self.max_days <= 100_000, f"max_days must be in [1, 100000], got {self.max_days}")
        require(
            self.name,
            1 <= self.start_year <= self.end_year <= 9000,
            f"need 1 <= start_year <= end_year <= 9000, got {self.start_year} and {self.end_year}",
        )
        unknown = [op for op in self.ops if op not in _OPS]
        require(self.name, bool(self.ops) and not unknown, f"ops must be a non-empty subset of {list(_OPS)}, got {list(self.ops)}")

    def sample(self, rng: random.Random) -> dict[str, Any]:
        first = dt.date(self.start_year, 1, 1).toordinal()
        last = dt.date(self.end_year, 12, 31).toordinal()
        return {
            "op": rng.choice(self.ops),
            "date": dt.date.fromordinal(rng.randint(first, last)).isoformat(),
            "days": rng.randint(1, self.max_days),
        }

    def question(self, params: dict[str, Any]) -> str:
        op, date, days = params["op"], params["date"], params["days"]
        if op == "between":
            return f"How many days are there from {date} to {_shift(date, days)}?"
        return f"What date is {days} days {op} {date}?"

    def solve(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        op, date, days = params["op"], params["date"], params["days"]
        if op == "between":
            return str(days), {**params, "end": _shift(date, days)}
        try:
            return _shift(date, days if op == "after" else -days), dict(params)
        except (OverflowError, ValueError):
            return None  # beyond year 1..9999

    def score(self, answer: str | None, example: Example) -> float:
        return score_date(answer, example.answer)

    def solution_code(self, example: Example) -> str:
        m = example.meta
        start = _date_literal(m["date"])
        if m["op"] == "between":
            return f"from datetime import date\nprint(({_date_literal(m['end'])} - {start}).days)"
        sign = "+" if m["op"] == "after" else "-"
        return f"from datetime import date, timedelta\nprint({start} {sign} timedelta(days={m['days']}))"


def _shift(iso_date: str, days: int) -> str:
    return (dt.date.fromisoformat(iso_date) + dt.timedelta(days=days)).isoformat()


def _date_literal(iso_date: str) -> str:
    d = dt.date.fromisoformat(iso_date)
    return f"date({d.year}, {d.month}, {d.day})"
