"""Mixture configs: which tasks to train on, with which options and weights.

A mixture YAML (also the format of each curriculum stage file):

    tasks:
      - task: multiplication          # registry name (see r1ci_jax.tasks.registry)
        weight: 2.0                   # relative sampling weight, > 0
        options: {digits_a: 3, digits_b: 2}
      - task: multiplication
        name: multiplication_hard     # label: needed when one task appears twice
        options: {digits_a: 6, digits_b: 5}
      - task: bbh
        options: {path: data/bbh/date_understanding.json, split: by_hash}

A task's label (its `name`) keys the weights, pass rates and curriculum; labels must
be unique within a mixture.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from r1ci_jax.config import ConfigError, from_dict, load_yaml
from r1ci_jax.tasks import Task, get_task


@dataclasses.dataclass
class TaskSpec:
    """One mixture entry: registry name, sampling weight, optional label and options."""

    task: str
    weight: float = 1.0
    name: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MixtureConfig:
    tasks: list[TaskSpec] = dataclasses.field(default_factory=list)


def validate_mixture(mixture: MixtureConfig, where: str = "mixture") -> None:
    """Reject an empty mixture, non-positive weights, and non-mapping options."""
    if not mixture.tasks:
        raise ConfigError(f"{where}.tasks: a mixture needs at least one task")
    for i, spec in enumerate(mixture.tasks):
        if not spec.task:
            raise ConfigError(f"{where}.tasks[{i}].task: empty task name")
        if not spec.weight > 0:
            raise ConfigError(f"{where}.tasks[{i}].weight: must be > 0, got {spec.weight}")
        if not isinstance(spec.options, dict):
            raise ConfigError(f"{where}.tasks[{i}].options: expected a mapping, got {spec.options!r}")
        if spec.name is not None and "name" in spec.options:
            raise ConfigError(f"{where}.tasks[{i}]: give the label as `name` or options.name, not both")


def mixture_from_dict(data: dict[str, Any], where: str = "mixture") -> MixtureConfig:
    mixture = from_dict(MixtureConfig, data, where=where)
    validate_mixture(mixture, where)
    return mixture


def load_mixture(path: str | os.PathLike) -> MixtureConfig:
    """Read and validate a mixture (or curriculum stage) YAML file."""
    return mixture_from_dict(load_yaml(path), where=str(path))


def build_task(spec: TaskSpec) -> Task:
    options = dict(spec.options)
    if spec.name is not None:
        options["name"] = spec.name
    return get_task(spec.task, **options)


def build_tasks(mixture: MixtureConfig, where: str = "mixture") -> dict[str, Task]:
    """Label -> task for every entry, in mixture order; labels must be unique."""
    validate_mixture(mixture, where)
    tasks: dict[str, Task] = {}
    for i, spec in enumerate(mixture.tasks):
        try:
            task = build_task(spec)
        except (KeyError, ValueError, TypeError) as e:  # a missing optional package stays an ImportError
            raise ConfigError(f"{where}.tasks[{i}] ({spec.task}): {e}") from e
        if task.name in tasks:
            raise ConfigError(
                f"{where}.tasks[{i}]: task label {task.name!r} appears twice; give one entry a distinct `name`"
            )
        tasks[task.name] = task
    return tasks


def task_weights(mixture: MixtureConfig, tasks: dict[str, Task]) -> dict[str, float]:
    """Label -> weight, aligned with `build_tasks(mixture)`."""
    return {label: spec.weight for label, spec in zip(tasks, mixture.tasks)}
