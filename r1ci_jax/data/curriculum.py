"""Curriculum by improvement potential: train first on tasks with most to gain.

A task's pass rate p (from an eval run) gives improvement potential 4p(1-p): 1 at
p = 0.5, 0 when the task is always (p = 1) or never (p = 0) solved, where GRPO's
group-relative advantage is zero anyway. Tasks are sorted from high to low potential
and cut into stages; each stage is a mixture config (YAML) for one training phase.

Pass-rate JSON (what an eval run writes with `write_pass_rates`):
    {"pass_rates": {"multiplication": 0.42, "game24": 0.05}}
Also read: a flat {"task": p} mapping, and per-task objects {"pass_rate": p} or
{"correct": c, "total": n} (or "passed" for "correct").
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from r1ci_jax.config import ConfigError
from r1ci_jax.data.mixture import MixtureConfig, TaskSpec, build_task, build_tasks, validate_mixture

WEIGHTINGS = ("potential", "base")


@dataclasses.dataclass
class CurriculumConfig:
    num_stages: int = 3
    # Tasks at or below this potential are left out (0.0 drops exactly p = 0 and p = 1).
    min_potential: float = 0.0
    # "potential": stage weight = base weight * potential; "base": base weight as is.
    weighting: str = "potential"
    # Stage k also trains on the tasks of stages before it (guards against forgetting).
    cumulative: bool = False


@dataclasses.dataclass
class Stage:
    index: int  # 1-based
    mixture: MixtureConfig
    pass_rates: dict[str, float]
    potentials: dict[str, float]


@dataclasses.dataclass
class CurriculumPlan:
    stages: list[Stage]
    dropped: dict[str, float]  # label -> pass rate of tasks left out


def improvement_potential(pass_rate: float) -> float:
    return 4.0 * pass_rate * (1.0 - pass_rate)


def _rate_from_value(value: Any, where: str) -> float:
    if isinstance(value, dict):
        if "pass_rate" in value:
            value = value["pass_rate"]
        elif "total" in value and ("correct" in value or "passed" in value):
            correct, total = value.get("correct", value.get("passed")), value["total"]
            if not isinstance(total, (int, float)) or total <= 0 or isinstance(total, bool):
                raise ConfigError(f"{where}.total: must be a positive number, got {total!r}")
            value = correct / total if isinstance(correct, (int, float)) else correct
        else:
            raise ConfigError(f"{where}: expected a number, {{\"pass_rate\": p}} or {{\"correct\": c, \"total\": n}}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{where}: pass rate must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: pass rate must be in [0, 1], got {value}")
    return float(value)


def parse_pass_rates(data: Any, where: str = "pass_rates") -> dict[str, float]:
    """Label -> pass rate from any of the accepted JSON layouts."""
    if isinstance(data, dict) and isinstance(data.get("pass_rates"), dict):
        data, where = data["pass_rates"], f"{where}.pass_rates"
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a non-empty mapping of task -> pass rate")
    return {str(label): _rate_from_value(value, f"{where}.{label}") for label, value in data.items()}


def load_pass_rates(path: str | os.PathLike) -> dict[str, float]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: pass-rate file not found") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    return parse_pass_rates(data, where=str(path))


def write_pass_rates(path: str | os.PathLike, pass_rates: dict[str, float]) -> None:
    """Write pass rates in the layout `load_pass_rates` reads first."""
    rates = parse_pass_rates(dict(pass_rates))
    Path(path).write_text(json.dumps({"pass_rates": rates}, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_config(config: CurriculumConfig) -> None:
    if config.num_stages < 1:
        raise ConfigError(f"curriculum.num_stages: must be >= 1, got {config.num_stages}")
    if not 0.0 <= config.min_potential < 1.0:
        raise ConfigError(f"curriculum.min_potential: must be in [0, 1), got {config.min_potential}")
    if config.weighting not in WEIGHTINGS:
        raise ConfigError(f"curriculum.weighting: {config.weighting!r} is not one of {list(WEIGHTINGS)}")


def _specs_by_label(pass_rates: dict[str, float], base: MixtureConfig | None) -> dict[str, TaskSpec]:
    if base is None:
        specs = {label: TaskSpec(task=label) for label in pass_rates}
        for label, spec in specs.items():
            try:
                build_task(spec)  # unknown names fail here, listing close ones
            except (KeyError, ValueError, TypeError) as e:
                raise ConfigError(f"pass rates: task {label!r}: {e}") from e
        return specs
    validate_mixture(base)
    specs = dict(zip(build_tasks(base), base.tasks))
    unknown = sorted(set(pass_rates) - set(specs))
    if unknown:
        hints = []
        for label in unknown:
            close = difflib.get_close_matches(label, list(specs), n=3, cutoff=0.5)
            hints.append(f"{label!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ConfigError(f"pass rates name tasks not in the base mixture: {', '.join(hints)}; mixture has {sorted(specs)}")
    missing = sorted(set(specs) - set(pass_rates))
    if missing:
        raise ConfigError(f"pass rates lack tasks of the base mixture: {missing}")
    return specs


def _split_evenly(items: list[str], parts: int) -> list[list[str]]:
    """Contiguous chunks whose sizes differ by at most one, larger chunks first."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        chunks.append(items[start:end])
        start = end
    return [c for c in chunks if c]


def plan_curriculum(
    pass_rates: dict[str, float],
    base: MixtureConfig | None = None,
    config: CurriculumConfig | None = None,
) -> CurriculumPlan:
    """Stages from high to low improvement potential.

    With `base`, stage entries copy its specs (options, paths, weights) and every
    pass-rate label must be one of its task labels; without, labels are registry names.
    """
    config = config or CurriculumConfig()
    _check_config(config)
    rates = parse_pass_rates(dict(pass_rates))
    specs = _specs_by_label(rates, base)
    potentials = {label: improvement_potential(p) for label, p in rates.items()}
    kept = sorted((label for label in rates if potentials[label] > config.min_potential), key=lambda l: (-potentials[l], l))
    dropped = {label: rates[label] for label in sorted(rates) if label not in kept}
    if not kept:
        raise ConfigError(
            f"no task has improvement potential above {config.min_potential}: every task is always or never solved"
        )
    stages, seen = [], []
    for index, chunk in enumerate(_split_evenly(kept, config.num_stages), start=1):
        labels = seen + chunk if config.cumulative else chunk
        seen = seen + chunk
        entries = []
        for label in labels:
            spec = specs[label]
            weight = spec.weight * potentials[label] if config.weighting == "potential" else spec.weight
            entries.append(dataclasses.replace(spec, weight=float(f"{weight:.6g}"), options=dict(spec.options)))
        stages.append(
            Stage(
                index=index,
                mixture=MixtureConfig(tasks=entries),
                pass_rates={label: rates[label] for label in labels},
                potentials={label: potentials[label] for label in labels},
            )
        )
    return CurriculumPlan(stages=stages, dropped=dropped)


def _spec_dict(spec: TaskSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"task": spec.task, "weight": spec.weight}
    if spec.name is not None:
        entry["name"] = spec.name
    if spec.options:
        entry["options"] = spec.options
    return entry


def stage_yaml(stage: Stage, num_stages: int) -> str:
    """A stage's mixture YAML, headed by comments giving each task's p and potential."""
    lines = [f"# Curriculum stage {stage.index} of {num_stages} (r1ci curriculum); label: pass rate, potential 4p(1-p)"]
    for label, potential in stage.potentials.items():
        lines.append(f"#   {label}: p={stage.pass_rates[label]:.4f}, potential={potential:.4f}")
    body = yaml.safe_dump({"tasks": [_spec_dict(s) for s in stage.mixture.tasks]}, sort_keys=False)
    return "\n".join(lines) + "\n" + body


def write_stages(plan: CurriculumPlan, out_dir: str | os.PathLike) -> list[Path]:
    """Write stage_<k>.yaml for each stage and curriculum.json (summary); returns the stage files.

    Stage files of an earlier, longer plan in `out_dir` are removed so that the folder
    never mixes two curricula.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("stage_*.yaml"):
        suffix = old.stem[len("stage_"):]
        if suffix.isdigit() and int(suffix) > len(plan.stages):
            old.unlink()
    files = []
    for stage in plan.stages:
        file = out / f"stage_{stage.index}.yaml"
        file.write_text(stage_yaml(stage, len(plan.stages)), encoding="utf-8")
        files.append(file)
    summary = {
        "stages": [
            {
                "file": file.name,
                "tasks": {
                    spec_label: {
                        "pass_rate": stage.pass_rates[spec_label],
                        "potential": stage.potentials[spec_label],
                        "weight": spec.weight,
                    }
                    for spec_label, spec in zip(stage.potentials, stage.mixture.tasks)
                },
            }
            for stage, file in zip(plan.stages, files)
        ],
        "dropped": {label: {"pass_rate": p, "potential": improvement_potential(p)} for label, p in plan.dropped.items()},
    }
    (out / "curriculum.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return files
