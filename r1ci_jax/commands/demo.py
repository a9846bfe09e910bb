"""`r1ci demo`: the main job, end to end on CPU.

Current phases (each one real, no shortcuts): build a small Qwen2-architecture model,
show the built-in code-interpreter tasks and their canonical programs, export the
model to HuggingFace format and reload it with transformers to prove the export.
Training phases (SFT, GRPO with the sandboxed executor, evaluation) join as the
trainers and rollout land.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on CPU")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from r1ci_jax.checkpoint.hf import save_hf
    from r1ci_jax.models.qwen2 import Qwen2Config, forward, init_params
    from r1ci_jax.tasks import extract_answer, get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print("== tasks: questions, canonical programs, verified answers")
    for name in ("multiplication", "letter_count"):
        task = get_task(name)
        ex = task.example(0, seed=args.seed)
        print(f"[{name}] {ex.question}")
        print(f"  gold {ex.answer!r}; score of <<<{ex.answer}>>>: {task.score(extract_answer(f'<<<{ex.answer}>>>'), ex)}")

    print("== model: small Qwen2 architecture")
    config = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=352, num_layers=2, num_heads=4,
                         num_kv_heads=2, tie_word_embeddings=True, rope_theta=10000.0)
    params = init_params(config, jax.random.PRNGKey(args.seed))
    print(f"  {config.num_params() / 1e6:.2f}M params")

    print("== export to HuggingFace format and reload with transformers")
    import torch
    import transformers
    export = save_hf(params, config, out / "hf_export")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(export)).eval()
    tokens = np.random.RandomState(args.seed).randint(0, config.vocab_size, (2, 16))
    with torch.no_grad():
        ref = model(torch.as_tensor(tokens)).logits.numpy()
    ours = np.asarray(forward(params, config, tokens)[0])
    diff = float(np.abs(ours - ref).max())
    print(f"  exported to {export}; max |logits ours - transformers| = {diff:.2e}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0 if diff < 1e-4 else 1
