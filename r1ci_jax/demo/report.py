"""The demo's results: a table of accuracy per task, text-only vs with code, after SFT and
after GRPO; the GRPO reward curve as a PNG; everything as report.json."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def accuracy_table(phases: dict[str, Sequence[Any]]) -> str:
    """phases: phase name -> TaskScores (rollout.evaluate). One row per task, a column per
    (phase, mode), and an average row."""
    columns = [(phase, mode) for phase, scores in phases.items() for mode in dict.fromkeys(s.mode for s in scores)]
    by = {(phase, s.task, s.mode): s.accuracy for phase, scores in phases.items() for s in scores}
    tasks = list(dict.fromkeys(s.task for scores in phases.values() for s in scores))
    width = max(len("average"), *(len(t) for t in tasks))
    head = f"{'task':{width}s} " + " ".join(f"{phase + ' ' + mode:>15s}" for phase, mode in columns)
    lines = [head, "-" * len(head)]
    for task in tasks:
        lines.append(f"{task:{width}s} " + " ".join(f"{by[p, task, m]:15.1%}" for p, m in columns))
    lines.append(f"{'average':{width}s} " + " ".join(
        f"{np.mean([by[p, t, m] for t in tasks]):15.1%}" for p, m in columns))
    return "\n".join(lines)


def averages(scores: Sequence[Any]) -> dict[str, float]:
    modes = dict.fromkeys(s.mode for s in scores)
    return {m: float(np.mean([s.accuracy for s in scores if s.mode == m])) for m in modes}


def plot_rewards(points: list[tuple[int, float]], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if points:
        steps, rewards = zip(*points)
        ax.plot(steps, rewards, marker="o")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean rollout reward")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("r1ci demo: reward during GRPO")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(path: Path, config: Any, phases: dict[str, Sequence[Any]], rewards: list[tuple[int, float]],
                 timings: dict[str, float], export_dir: Path, export_max_diff: float) -> None:
    payload = {
        "config": dataclasses.asdict(config),
        "accuracy": {phase: [dataclasses.asdict(s) for s in scores] for phase, scores in phases.items()},
        "average": {phase: averages(scores) for phase, scores in phases.items()},
        "reward_curve": rewards, "seconds": timings,
        "export": {"path": str(export_dir), "max_abs_logit_diff_vs_transformers": export_max_diff},
    }
    path.write_text(json.dumps(payload, indent=2))
