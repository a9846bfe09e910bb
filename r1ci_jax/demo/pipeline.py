"""The demo's phases, each real: data from the sandboxed executor, a trained BPE tokenizer,
SFT, GRPO with rollouts through the executor, greedy evaluation text-only vs with code, and
an HF export reloaded by transformers. Everything lands under the output directory."""
from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from r1ci_jax.config import from_dict
from r1ci_jax.demo.config import DemoConfig
from r1ci_jax.tasks import get_task
from r1ci_jax.tasks.protocol import format_answer, format_code_block, format_execution_results

PROTOCOL_TOKENS = ["```python\n", "```\n", "<<<", ">>>", "Code Execution Results:\n"]


def build_tasks(cfg: DemoConfig) -> dict[str, Any]:
    return {t.task: get_task(t.task, **t.options) for t in cfg.tasks}


def sft_example_counts(cfg: DemoConfig) -> dict[str, int]:
    counts = {t.task: round(cfg.sft_examples_per_task * t.weight) for t in cfg.tasks}
    for t in cfg.tasks:
        if not 0.0 <= t.direct_share < 1.0:
            raise ValueError(f"demo config: tasks[{t.task}].direct_share={t.direct_share} must be in [0, 1) "
                             "(the share of its SFT trajectories that answer without code)")
        if t.weight <= 0 or counts[t.task] < 1:
            raise ValueError(f"demo config: tasks[{t.task}].weight={t.weight} leaves it no SFT examples "
                             f"(sft_examples_per_task={cfg.sft_examples_per_task})")
    return counts


async def make_trajectories(cfg: DemoConfig, tasks: dict[str, Any], executor: Any) -> list[list[dict[str, str]]]:
    """Code-interpreter conversations: the task's program, run by the real executor, its
    printed output inserted as the tool message, then the answer read from that output.
    A task's `direct_share` of them state the answer directly instead (no code)."""
    conversations = []
    counts = sft_example_counts(cfg)
    direct_rng = random.Random(cfg.seed + 7)  # its own stream: the final shuffle uses cfg.seed
    direct_shares = {t.task: t.direct_share for t in cfg.tasks}
    for name, task in tasks.items():
        examples = list(task.examples(counts[name], seed=cfg.seed, split="train"))
        programs = [task.solution_code(e) for e in examples]
        results = await asyncio.gather(*[executor.run(p) for p in programs])
        for example, program, result in zip(examples, programs, results):
            if result.status != "ok":
                raise RuntimeError(f"{name}: the canonical program failed ({result.status}): {result.stderr[-300:]}")
            answer = result.stdout.strip()
            if task.score(answer, example) != 1.0:
                raise RuntimeError(f"{name}: the canonical program printed {answer!r}, not the gold answer")
            prompt = task.prompt(example, style=cfg.system_prompt)
            if direct_rng.random() < direct_shares[name]:
                # As a text-only reasoner would: the (correct) answer, stated without running code.
                conversations.append(prompt + [{"role": "assistant", "content": format_answer(answer)}])
                continue
            conversations.append(prompt + [
                {"role": "assistant", "content": format_code_block(program)},
                {"role": "tool", "content": format_execution_results(result.stdout)},
                {"role": "assistant", "content": format_answer(answer)}])
    random.Random(cfg.seed).shuffle(conversations)
    return conversations


def train_demo_tokenizer(cfg: DemoConfig, conversations: list[list[dict[str, str]]], path: Path) -> Any:
    from r1ci_jax.tokenizer import train_tokenizer
    # Role headers too, so "user" / "assistant" become single tokens as in Qwen's vocabulary.
    texts = [f"{m['role']}\n{m['content']}" for c in conversations for m in c]
    # A merge must be as common as the tasks' own wording (in >= 1 of 10 conversations):
    # merges of random letter pairs would tokenize the same random string in varying
    # pieces, which a tiny model copies and counts worse than single letters.
    min_frequency = max(2, len(conversations) // 10)
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size, min_frequency=min_frequency,
                                extra_tokens=PROTOCOL_TOKENS)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def architecture(cfg: DemoConfig, tokenizer: Any) -> dict[str, Any]:
    return dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_layers=cfg.num_layers, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                rope_theta=10000.0, tie_word_embeddings=True, initializer_range=cfg.init_std,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                max_position_embeddings=cfg.max_len)


def run_sft_phase(cfg: DemoConfig, tokenizer: Any, data_file: Path, out: Path, progress: bool) -> Path:
    from r1ci_jax.sft.config import SFTConfig
    from r1ci_jax.sft.loop import run_sft
    shutil.rmtree(out, ignore_errors=True)
    config = from_dict(SFTConfig, {
        "model": {"architecture": architecture(cfg, tokenizer), "init_seed": cfg.seed, "compute_dtype": "float32",
                  "param_dtype": "float32", "tokenizer": str(out.parent / "tokenizer")},
        "data": {"train_file": str(data_file), "seq_len": cfg.sft_seq_len, "packing": True,
                 "batch_size": cfg.sft_batch_size, "micro_batch_size": cfg.sft_batch_size, "seed": cfg.seed},
        "mesh": {"mesh": {"data": -1, "fsdp": 1, "tensor": 1}},
        "optimizer": {"learning_rate": cfg.sft_learning_rate, "warmup_steps": max(1, cfg.sft_steps // 20),
                      "b2": cfg.sft_adam_b2},
        "loop": {"output_dir": str(out), "total_steps": cfg.sft_steps, "checkpoint_every": 0, "export_hf": True,
                 "progress": progress, "log_every": 10, "tensorboard": False},
    }, where="demo sft")
    run_sft(config, tokenizer=tokenizer)
    return out / "hf"


def run_grpo_phase(cfg: DemoConfig, tokenizer: Any, model_dir: Path, out: Path, progress: bool) -> Path:
    from r1ci_jax.rl.config import GRPOConfig
    from r1ci_jax.rl.loop import run_grpo
    shutil.rmtree(out, ignore_errors=True)
    episodes = cfg.grpo_prompts_per_step * cfg.grpo_group_size
    config = from_dict(GRPOConfig, {
        "model": {"path": str(model_dir), "compute_dtype": "float32", "param_dtype": "float32"},
        "rollout": {"factory": "r1ci_jax.rollout:make_rollout",
                    "options": {"max_len": cfg.max_len, "num_workers": cfg.executor_workers,
                                "rollout": {"max_total_tokens": cfg.max_total_tokens, "chunk_steps": 16,
                                            "max_code_calls": 2, "exec_timeout_s": 5.0}}},
        "prompts": {"factory": "r1ci_jax.rl.prompts:grain_prompts",
                    "options": {"mixture": {"tasks": [{"task": t.task, "options": t.options, "weight": t.weight}
                                                          for t in cfg.tasks]}, "split": "train",
                                "seed": cfg.seed + 1, "max_prompt_tokens": cfg.max_len - cfg.max_total_tokens - 8,
                                "system_prompt": cfg.system_prompt, "read_threads": 0}},
        "mesh": {"mesh": {"data": -1, "fsdp": 1, "tensor": 1}},
        "optimizer": {"learning_rate": cfg.grpo_learning_rate, "decay": "constant"},
        "loss": {"kl_coef": 0.0, "entropy_coef": 0.0, "temperature": cfg.grpo_temperature},
        "batch": {"prompts_per_step": cfg.grpo_prompts_per_step, "group_size": cfg.grpo_group_size,
                  "mini_batch_prompts": cfg.grpo_prompts_per_step, "micro_batch_size": episodes,
                  "pad_multiple": 32, "max_length": cfg.max_len * 2, "pad_id": tokenizer.pad_token_id},
        "loop": {"output_dir": str(out), "total_steps": cfg.grpo_steps, "checkpoint_every": 0, "export_hf": True,
                 "progress": progress, "tensorboard": False, "seed": cfg.seed},
    }, where="demo grpo")
    run_grpo(config, tokenizer=tokenizer)
    return out / "hf"


async def evaluate_model(cfg: DemoConfig, tasks: dict[str, Any], model_dir: Path, tokenizer: Any,
                         executor: Any) -> list[Any]:
    from r1ci_jax.checkpoint.hf import load_hf
    from r1ci_jax.rollout.evaluate import evaluate_tasks
    from r1ci_jax.sampling import Sampler
    config, params = load_hf(model_dir)
    sampler = Sampler(params, config, tokenizer, max_len=cfg.max_len)
    return await evaluate_tasks(sampler, executor, tasks, modes=("text", "code"), n=cfg.eval_n, seed=cfg.eval_seed,
                                split="test", system_prompt=cfg.system_prompt,
                                max_total_tokens=cfg.max_total_tokens, max_code_calls=2, exec_timeout_s=5.0)


def check_export(model_dir: Path, tokenizer: Any) -> float:
    """Reload the export with transformers; max |logits ours - transformers| on a prompt."""
    import torch
    import transformers

    from r1ci_jax.checkpoint.hf import load_hf
    from r1ci_jax.models.qwen2 import forward
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = np.asarray([tokenizer.encode("Compute 12 * 34.")])
    with torch.no_grad():
        ref = model(torch.as_tensor(ids)).logits.float().numpy()
    config, params = load_hf(model_dir)
    ours = np.asarray(forward(params, config, ids)[0])
    return float(np.abs(ours - ref).max())


def reward_curve(grpo_dir: Path) -> list[tuple[int, float]]:
    points = []
    for line in (grpo_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "rollout/reward_mean" in record:
            points.append((int(record["step"]), float(record["rollout/reward_mean"])))
    return points


def timed(label: str, timings: dict[str, float]):
    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"== {label}", flush=True)

        def __exit__(self, *exc):
            timings[label] = time.perf_counter() - self.start
            if exc[0] is None:
                print(f"   ({timings[label]:.1f}s)", flush=True)
    return _Timer()
