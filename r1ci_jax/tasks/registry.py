"""Task registry: names -> factories, `get_task(name, **options)`, `list_tasks()`.

Names:
    multiplication, letter_count, sorting, modular_arithmetic, game24, date_arithmetic
                      built-in synthetic tasks; options are their difficulty knobs
    symbench, bbh, jsonl
                      loaders of local data; options: path=..., and loader settings
    rg/<dataset>      any reasoning-gym dataset (optional dependency); options are the
                      dataset's config fields
Every factory also accepts `name=` to relabel the task (two difficulties of one task
in a mixture, say).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable

from r1ci_jax.tasks.base import Task

REASONING_GYM_PREFIX = "rg/"

# name -> "module:attribute" of the factory, imported on first use so that
# `import r1ci_jax.tasks` stays cheap.
_BUILTIN: dict[str, str] = {
    "multiplication": "r1ci_jax.tasks.synthetic.arithmetic:Multiplication",
    "modular_arithmetic": "r1ci_jax.tasks.synthetic.arithmetic:ModularArithmetic",
    "letter_count": "r1ci_jax.tasks.synthetic.text:LetterCount",
    "sorting": "r1ci_jax.tasks.synthetic.text:Sorting",
    "game24": "r1ci_jax.tasks.synthetic.game24:Game24",
    "date_arithmetic": "r1ci_jax.tasks.synthetic.dates:DateArithmetic",
    "symbench": "r1ci_jax.tasks.loaders:load_symbench",
    "bbh": "r1ci_jax.tasks.loaders:load_bbh",
    "jsonl": "r1ci_jax.tasks.loaders:load_jsonl",
}
_REGISTERED: dict[str, Callable[..., Task]] = {}

SYNTHETIC_TASK_NAMES = ("multiplication", "letter_count", "sorting", "modular_arithmetic", "game24", "date_arithmetic")


class UnknownTaskError(KeyError):
    """No task of that name; the message lists close names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Add a task factory under `name` (called as `factory(**options)`)."""
    if name in _BUILTIN or name in _REGISTERED or name.startswith(REASONING_GYM_PREFIX):
        raise ValueError(f"task name {name!r} is taken")
    _REGISTERED[name] = factory


def list_tasks(include_reasoning_gym: bool = False) -> list[str]:
    """Names `get_task` accepts; reasoning-gym's only on request (importing it is slow)."""
    names = sorted({*_BUILTIN, *_REGISTERED})
    if include_reasoning_gym:
        from r1ci_jax.tasks.reasoning_gym_tasks import reasoning_gym_datasets

        names += [REASONING_GYM_PREFIX + d for d in reasoning_gym_datasets()]
    return names


def get_task(name: str, /, **options: Any) -> Task:
    """The task called `name`, built with `options` (knobs, or `path=` for loaders)."""
    if name.startswith(REASONING_GYM_PREFIX):
        from r1ci_jax.tasks.reasoning_gym_tasks import ReasoningGymTask

        return ReasoningGymTask(dataset=name[len(REASONING_GYM_PREFIX):], **options)
    factory = _factory(name)
    _check_options(name, factory, options)
    return factory(**options)


def _factory(name: str) -> Callable[..., Task]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        module, _, attribute = _BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attribute)
    close = difflib.get_close_matches(name, list_tasks(), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UnknownTaskError(
        f"unknown task {name!r}{hint} (known: {', '.join(list_tasks())}; "
        f"reasoning-gym datasets as '{REASONING_GYM_PREFIX}<name>')"
    )


def _check_options(name: str, factory: Callable[..., Task], options: dict[str, Any]) -> None:
    """Name misspelled and missing options (a bare TypeError would not say which task)."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(f"task {name!r}: unknown option(s) {unknown}; known: {sorted(parameters)}")
    required = [
        p.name
        for p in parameters.values()
        if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_POSITIONAL
    ]
    missing = [p for p in required if p not in options]
    if missing:
        raise ValueError(f"task {name!r}: missing option(s) {missing}")
