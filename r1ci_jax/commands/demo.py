"""`r1ci demo`: the main job, end to end on CPU, no downloads.

Phases: generate code-interpreter trajectories with the real sandboxed executor; train a
byte-level BPE tokenizer with a chat template; SFT a small Qwen2-architecture model; evaluate
text-only vs with code; GRPO with real rollouts through the executor; evaluate again; export
to HuggingFace format and reload with transformers. Writes runs/demo/{report.json,
reward.png, grpo/hf, ...} and prints the accuracy table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a code-interpreter model end to end on CPU (SFT, GRPO, eval)")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--config", default=None, help="YAML with DemoConfig fields (default: configs/demo.yaml values)")
    p.add_argument("--quick", action="store_true", help="toy scale: every phase runs in seconds, learns nothing")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from r1ci_jax.config import from_yaml
    from r1ci_jax.demo import pipeline as P
    from r1ci_jax.demo.config import DemoConfig
    from r1ci_jax.demo.report import accuracy_table, averages, plot_rewards, write_report
    from r1ci_jax.executor import CodeExecutor

    cfg = DemoConfig.quick() if args.quick else (from_yaml(DemoConfig, args.config) if args.config else DemoConfig())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tasks = P.build_tasks(cfg)

    async def with_executor(fn):
        async with CodeExecutor(num_workers=cfg.executor_workers, timeout_s=5.0) as executor:
            return await fn(executor)

    with P.timed("data: canonical programs run in the sandboxed executor", timings):
        conversations = asyncio.run(with_executor(lambda ex: P.make_trajectories(cfg, tasks, ex)))
        data_file = out / "sft.jsonl"
        data_file.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
        print(f"   {len(conversations)} trajectories -> {data_file}")
    with P.timed("tokenizer: byte-level BPE with a chat template", timings):
        tokenizer = P.train_demo_tokenizer(cfg, conversations, out / "tokenizer")
        print(f"   vocab {len(tokenizer)} -> {out / 'tokenizer'}")
    with P.timed(f"SFT: {cfg.sft_steps} steps", timings):
        sft_dir = P.run_sft_phase(cfg, tokenizer, data_file, out / "sft", progress)
    with P.timed("eval after SFT (greedy, held-out seeds)", timings):
        after_sft = asyncio.run(with_executor(lambda ex: P.evaluate_model(cfg, tasks, sft_dir, tokenizer, ex)))
        print(f"   {averages(after_sft)}")
    with P.timed(f"GRPO: {cfg.grpo_steps} steps with rollouts through the executor", timings):
        grpo_dir = P.run_grpo_phase(cfg, tokenizer, sft_dir, out / "grpo", progress)
    with P.timed("eval after GRPO", timings):
        after_grpo = asyncio.run(with_executor(lambda ex: P.evaluate_model(cfg, tasks, grpo_dir, tokenizer, ex)))
    with P.timed("export: reload the HF export with transformers", timings):
        diff = P.check_export(grpo_dir, tokenizer)
        print(f"   {grpo_dir}: max |logits ours - transformers| = {diff:.2e}")
    phases = {"SFT": after_sft, "GRPO": after_grpo}
    rewards = P.reward_curve(out / "grpo")
    plot = plot_rewards(rewards, out / "reward.png")
    timings["total"] = time.perf_counter() - start
    write_report(out / "report.json", cfg, phases, rewards, timings, grpo_dir, diff)
    print()
    print(accuracy_table(phases))
    print(f"\nexported model: {grpo_dir}\nreward curve: {plot}\nreport: {out / 'report.json'}")
    print(f"total {timings['total']:.0f}s")
    return 0 if diff < 1e-3 else 1
