"""Shared machinery of the synthetic tasks: seeded sampling and disjoint splits.

Example `index` of `split` under `seed` comes from its own `random.Random` keyed by
(task name, split, seed, index), so any example is produced without the ones before
it (random access for the data pipeline) and is the same on every run and host.

Train and test are disjoint by construction: a question belongs to the test split iff
a hash of its text says so (`base.split_of`, TEST_FRACTION of questions), and each
split redraws until it gets one of its own questions.
"""
from __future__ import annotations

import abc
import random
from typing import Any

from r1ci_jax.tasks.base import Example, Task, check_index, check_split, split_of

# Redraw budget per example; small knobs with few distinct questions can exhaust it.
_MAX_DRAWS = 2000


def require(task: str, condition: bool, message: str) -> None:
    """Knob validation with an error that names the task."""
    if not condition:
        raise ValueError(f"task {task!r}: {message}")


def random_int_with_digits(rng: random.Random, digits: int) -> int:
    """A uniformly drawn integer with exactly `digits` decimal digits."""
    low = 10 ** (digits - 1) if digits > 1 else 0
    return rng.randint(low, 10**digits - 1)


class SyntheticTask(Task):
    """A generated task; subclasses are frozen dataclasses whose fields are knobs.

    Subclasses implement `sample` (cheap: draw the parameters), `question`, `solve`
    (gold answer and meta, or None to reject the draw), `score` and `solution_code`.
    """

    name: str

    def size(self, split: str = "train") -> int | None:
        check_split(self.name, split)
        return None

    def example(self, index: int, seed: int = 0, split: str = "train") -> Example:
        check_split(self.name, split)
        check_index(self.name, index, None)
        rng = random.Random(f"{self.name}|{split}|{seed}|{index}")
        for _ in range(_MAX_DRAWS):
            params = self.sample(rng)
            question = self.question(params)
            if split_of(question) != split:
                continue
            solved = self.solve(params)
            if solved is None:
                continue
            answer, meta = solved
            return Example(
                task=self.name, id=f"{self.name}/{split}/{seed}/{index}", question=question, answer=answer, meta=meta
            )
        raise RuntimeError(
            f"task {self.name!r}: no {split} example after {_MAX_DRAWS} draws; "
            "the difficulty knobs allow too few distinct questions"
        )

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> dict[str, Any]:
        """Draw the parameters of one problem."""

    @abc.abstractmethod
    def question(self, params: dict[str, Any]) -> str:
        """The compact question text for `params`."""

    @abc.abstractmethod
    def solve(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(gold answer, meta) for `params`, or None when the draw has no answer."""

    @abc.abstractmethod
    def solution_code(self, example: Example) -> str:
        """A Python program that prints the answer to `example` (canonical solution)."""
