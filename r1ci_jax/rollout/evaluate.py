"""Greedy evaluation of tasks, text-only and with code: accuracy, code calls, executor failures."""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from r1ci_jax.data.tokenize import encode_prompt
from r1ci_jax.rollout.orchestrator import RolloutConfig, run_rollout


@dataclasses.dataclass
class TaskScore:
    task: str
    mode: str
    n: int
    accuracy: float
    answered: float
    code_calls_per_answer: float
    exec_failures: int
    exec_calls: int


async def evaluate_tasks(sampler: Any, executor: Any, tasks: dict[str, Any], modes: Sequence[str] = ("text", "code"),
                         n: int = 200, seed: int = 1000, split: str = "test", batch_size: int = 64,
                         system_prompt: str = "default", max_total_tokens: int = 512, max_code_calls: int = 8,
                         exec_timeout_s: float = 10.0, params: Any = None, progress: Any = None,
                         batch_multiple: int = 1) -> list[TaskScore]:
    """Score every task in every mode on the same `n` held-out examples (greedy decoding).

    tasks: label -> task object (`r1ci_jax.tasks`); prompts are rendered with the
    sampler's tokenizer chat template. progress: optional tqdm-like bar advanced per episode.
    batch_multiple: decode batches are padded (with copies of a prompt, not scored) to a
    multiple of this, e.g. the data-parallel size of the sampler's mesh.
    """
    tokenizer = sampler.tokenizer
    scores: list[TaskScore] = []
    for label, task in tasks.items():
        examples = list(task.examples(n, seed=seed, split=split))
        if not examples:
            raise ValueError(f"task {label!r} has no {split!r} examples to evaluate")
        prompts = [encode_prompt(tokenizer, task.prompt(e, style=system_prompt)) for e in examples]
        for mode in modes:
            config = RolloutConfig(mode=mode, temperature=0.0, max_total_tokens=max_total_tokens,
                                   max_code_calls=max_code_calls, exec_timeout_s=exec_timeout_s)
            episodes = []
            for start in range(0, len(examples), batch_size):
                chunk = examples[start:start + batch_size]
                pad = -len(chunk) % batch_multiple
                rows = chunk + [chunk[-1]] * pad
                scorers = [lambda a, e=e: task.score(a, e) for e in rows]
                chunk_prompts = prompts[start:start + batch_size]
                result = await run_rollout(sampler, executor if mode == "code" else None,
                                           chunk_prompts + [chunk_prompts[-1]] * pad, scorers, config,
                                           params=params, session_prefix=f"eval-{label}-{mode}-{start}")
                episodes += result.episodes[:len(chunk)]
                if progress is not None:
                    progress.update(len(chunk))
            answered = [e for e in episodes if e.answer is not None]
            statuses = [s for e in episodes for s in e.exec_statuses]
            scores.append(TaskScore(
                task=label, mode=mode, n=len(episodes),
                accuracy=float(np.mean([e.reward for e in episodes])),
                answered=len(answered) / len(episodes),
                code_calls_per_answer=float(np.mean([e.code_calls for e in answered])) if answered else 0.0,
                exec_failures=sum(s != "ok" for s in statuses), exec_calls=len(statuses)))
    return scores


def format_table(scores: Sequence[TaskScore]) -> str:
    """Accuracy per task and mode, with an average row."""
    modes = list(dict.fromkeys(s.mode for s in scores))
    tasks = list(dict.fromkeys(s.task for s in scores))
    by = {(s.task, s.mode): s for s in scores}
    width = max(len("average"), *(len(t) for t in tasks))
    head = f"{'task':{width}s} " + " ".join(f"{m + ' acc':>10s} {m + ' calls':>10s}" for m in modes)
    lines = [head, "-" * len(head)]
    for t in tasks:
        lines.append(f"{t:{width}s} " + " ".join(
            f"{by[t, m].accuracy:10.1%} {by[t, m].code_calls_per_answer:10.2f}" for m in modes))
    lines.append(f"{'average':{width}s} " + " ".join(
        f"{np.mean([by[t, m].accuracy for t in tasks]):10.1%} "
        f"{np.mean([by[t, m].code_calls_per_answer for t in tasks]):10.2f}" for m in modes))
    failures = sum(s.exec_failures for s in scores)
    calls = sum(s.exec_calls for s in scores)
    lines.append(f"executor: {calls} calls, {failures} failures")
    return "\n".join(lines)


def save_scores(scores: Sequence[TaskScore], path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    by_mode: dict[str, list[float]] = {}
    for s in scores:
        by_mode.setdefault(s.mode, []).append(s.accuracy)
    payload = {"scores": [dataclasses.asdict(s) for s in scores],
               "average": {m: float(np.mean(v)) for m, v in by_mode.items()}, **(extra or {})}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
