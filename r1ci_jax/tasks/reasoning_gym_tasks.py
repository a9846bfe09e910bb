"""Any reasoning-gym dataset as a task (`get_task("rg/<dataset>", **config)`).

reasoning-gym is optional (`pip install 'r1ci-jax[tasks]'`); without it, building
such a task raises `MissingDependencyError` saying how to install it. Scores come
from the dataset's own `score_answer`. Its datasets are procedural: item i of a
dataset made with seed s is fixed, so a split is a derived seed and a size. Train and
test are different random streams of one generator, not disjoint sets: a small
problem space can repeat a question across them.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
from typing import Any

from r1ci_jax.tasks.base import Example, Task, check_index, check_split

INSTALL_HINT = "pip install 'r1ci-jax[tasks]' (or pip install reasoning-gym)"
# reasoning-gym needs a dataset size up front; examples are drawn lazily, so a large
# size costs nothing until used.
DEFAULT_SIZE = 100_000


class MissingDependencyError(ImportError):
    """An optional package a task needs is not installed."""


def _reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as e:
        raise MissingDependencyError(
            f"reasoning-gym tasks need the optional package reasoning-gym ({e}); install it with: {INSTALL_HINT}"
        ) from e
    return reasoning_gym


@functools.lru_cache(maxsize=1)
def reasoning_gym_datasets() -> tuple[str, ...]:
    """Names of the installed reasoning-gym's datasets."""
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return tuple(sorted(DATASETS))


def _split_seed(seed: int, split: str) -> int:
    # distinct, stable seeds per split: reasoning-gym seeds item i as Random(seed + i),
    # so neighbouring seeds would share items; hashing spreads them apart.
    digest = hashlib.blake2b(f"{split}|{seed}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


class ReasoningGymTask(Task):
    """reasoning-gym dataset `dataset`; `config` goes to `reasoning_gym.create_dataset`."""

    def __init__(self, dataset: str, name: str | None = None, size: int = DEFAULT_SIZE, **config: Any) -> None:
        rg = _reasoning_gym()
        known = reasoning_gym_datasets()
        if dataset not in known:
            close = difflib.get_close_matches(dataset, known, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join('rg/' + c for c in close)}?" if close else ""
            raise KeyError(f"unknown reasoning-gym dataset {dataset!r}{hint}")
        if size < 1:
            raise ValueError(f"task rg/{dataset}: size must be >= 1, got {size}")
        self.dataset_name = dataset
        self.name = name or f"rg/{dataset}"
        self._size = size
        self._config = config
        self._create = rg.create_dataset
        # score_answer reads only the entry and the dataset's config: one instance serves
        # every split; a bad config fails here, at construction.
        self._scorer = self._dataset(0, "train")

    @functools.lru_cache(maxsize=8)  # noqa: B019 - few (seed, split) pairs per task
    def _dataset(self, seed: int, split: str) -> Any:
        try:
            return self._create(self.dataset_name, seed=_split_seed(seed, split), size=self._size, **self._config)
        except TypeError as e:
            raise ValueError(f"task {self.name!r}: bad config {self._config}: {e}") from e

    def size(self, split: str = "train") -> int:
        check_split(self.name, split)
        return self._size

    def example(self, index: int, seed: int = 0, split: str = "train") -> Example:
        check_split(self.name, split)
        check_index(self.name, index, self._size)
        entry = self._dataset(seed, split)[index]
        return Example(
            task=self.name,
            id=f"{self.name}/{split}/{seed}/{index}",
            question=entry["question"],
            answer=entry["answer"],
            meta={"metadata": entry.get("metadata", {})},
        )

    def score(self, answer: str | None, example: Example) -> float:
        entry = {"question": example.question, "answer": example.answer, "metadata": example.meta.get("metadata", {})}
        try:
            value = float(self._scorer.score_answer(answer, entry))
        except Exception:  # noqa: BLE001 - a malformed model answer must score 0, not crash training
            return 0.0
        return min(1.0, max(0.0, value))
