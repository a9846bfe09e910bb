"""Metrics to `metrics.jsonl` (one JSON object per record) and TensorBoard event files.

Only the main process writes (`sharding.is_main_process()`); elsewhere every call is a
no-op, so callers need no guards.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from r1ci_jax.train.tfevents import EventFileWriter

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf / nan
    return value


class MetricsWriter:
    """write(step, metrics, prefix) -> one jsonl line {"step", "split", **metrics} + TB scalars."""

    def __init__(self, directory: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.directory = Path(directory)
        self.jsonl_path = self.directory / METRICS_FILE
        self._jsonl = None
        self._tb = None
        if enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
            if tensorboard:
                self._tb = EventFileWriter(self.directory / "tensorboard")

    def truncate_after(self, step: int) -> None:
        """Drop jsonl records of steps > `step` (a resumed run redoes them)."""
        if not self.enabled or not self.jsonl_path.exists():
            return
        self._jsonl.close()
        kept = [line for line in self.jsonl_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step_of(line) <= step]
        tmp = self.jsonl_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(self.jsonl_path)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")

    def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.scalar(f"{split}/{key}", value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None and not self._jsonl.closed:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1


def read_metrics(path: str | os.PathLike, split: str | None = "train") -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (one split, or all with split=None)."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if split is None or r.get("split") == split]
