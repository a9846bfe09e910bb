"""Loop plumbing shared by the SFT and GRPO trainers: config, schedule checks, progress,
plugin loading, config overrides."""
from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from r1ci_jax.config import ConfigError


@dataclasses.dataclass
class LoopConfig:
    output_dir: str = "runs/default"
    total_steps: int = 100            # loop steps (GRPO: rollout batches; SFT: optimizer updates)
    seed: int = 0                     # rng of the loop (rollouts, shuffles)
    eval_every: int = 0               # 0: never
    checkpoint_every: int = 50        # 0: only at the end
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    log_every: int = 1                # metrics-file period (progress bar updates every step)
    export_hf: bool = True            # write OUTPUT_DIR/hf (safetensors) at the end
    tensorboard: bool = True
    progress: bool = True

    def check(self, where: str = "loop") -> None:
        for name in ("total_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"


def due(step: int, every: int) -> bool:
    """True when a period-`every` action runs after `step` steps (every=0: never)."""
    return every > 0 and step % every == 0


@dataclasses.dataclass
class PluginConfig:
    """A component built by a factory: "package.module:callable", called with a context."""
    factory: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_object(spec: str, where: str = "factory") -> Any:
    """Import "package.module:attr" (attr may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where}: {spec!r} is not of the form 'package.module:callable'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{where}: cannot import module {module_name!r} of {spec!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply "a.b.c=value" strings (value parsed as YAML) to a nested config dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return data


class Progress:
    """A tqdm bar over loop steps that shows the latest headline metrics (main process only)."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
                         dynamic_ncols=True)

    def update(self, metrics: dict[str, Any], keys: Iterable[str]) -> None:
        shown = {}
        for key in keys:
            if key in metrics and isinstance(metrics[key], (int, float)):
                value = metrics[key]
                shown[key] = f"{value:.4g}" if isinstance(value, float) else value
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def write(self, text: str) -> None:
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()


class Stopwatch:
    def __init__(self) -> None:
        self._start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._start = now - self._start, now
        return elapsed
