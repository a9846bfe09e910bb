"""What a task is: examples, a chat prompt for each, and a rule-based score.

Every task (built-in synthetic, loaded from files, or from reasoning-gym) is a `Task`:

    task.name                               unique label, used in mixtures and pass rates
    task.size(split) -> int | None          distinct examples in `split`; None = unbounded
    task.example(index, seed, split)        the index-th example; same inputs, same example
    task.examples(n, seed, split)           the first n of those (all, for n=None)
    task.prompt(example, style)             [system, user] chat messages
    task.score(answer, example) -> float    in [0, 1]; answer is extract_answer's output

An `Example` carries everything scoring needs (`answer` = gold, `meta` = options,
numbers, ...), so a score can be computed long after generation from the example alone.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
from typing import Any

from r1ci_jax.tasks import protocol

SPLITS = ("train", "test")
# Share of questions that `split_of` puts in the test split.
TEST_FRACTION = 0.1
_HASH_BUCKETS = 1000


@dataclasses.dataclass(frozen=True)
class Example:
    """One problem: the user-facing `question`, the gold `answer`, and task data."""

    task: str
    id: str
    question: str
    answer: Any
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Task(abc.ABC):
    """Base class of all tasks; subclasses implement size, example and score."""

    name: str

    @abc.abstractmethod
    def size(self, split: str = "train") -> int | None:
        """Number of distinct examples in `split`, or None when generated without end."""

    @abc.abstractmethod
    def example(self, index: int, seed: int = 0, split: str = "train") -> Example:
        """The `index`-th example of `split` under `seed` (deterministic)."""

    @abc.abstractmethod
    def score(self, answer: str | None, example: Example) -> float:
        """Reward in [0, 1] for an extracted `answer` (None = no answer given)."""

    def examples(self, n: int | None = None, seed: int = 0, split: str = "train") -> list[Example]:
        """The first `n` examples (at most `size(split)`); n=None means all of a finite split."""
        size = self.size(split)
        if n is None:
            if size is None:
                raise ValueError(f"task {self.name!r} generates examples without end: pass n")
            n = size
        if n < 0:
            raise ValueError(f"task {self.name!r}: n must be >= 0, got {n}")
        count = n if size is None else min(n, size)
        return [self.example(i, seed, split) for i in range(count)]

    def prompt(self, example: Example, style: str = "default") -> list[dict[str, str]]:
        """Chat messages for `example`: the protocol's system prompt and the question."""
        messages = []
        system = protocol.system_prompt(style)
        if system is not None:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": example.question})
        return messages

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_split(task_name: str, split: str, known: tuple[str, ...] = SPLITS) -> None:
    if split not in known:
        raise ValueError(f"task {task_name!r}: unknown split {split!r}; known: {list(known)}")


def check_index(task_name: str, index: int, size: int | None) -> None:
    if index < 0 or (size is not None and index >= size):
        bound = "" if size is None else f" (size {size})"
        raise IndexError(f"task {task_name!r}: example index {index} out of range{bound}")


def split_of(question: str) -> str:
    """"train" or "test" from a stable hash of the question text (TEST_FRACTION test).

    Synthetic tasks and loaders that hold data out by hash use it, so a question is
    never in both splits.
    """
    digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % _HASH_BUCKETS
    return "test" if bucket < TEST_FRACTION * _HASH_BUCKETS else "train"
