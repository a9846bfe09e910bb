"""`run_grpo` with the real rollout plugin: sampler + sandboxed executor + Grain prompts."""
import json

import numpy as np

from r1ci_jax.config import from_dict
from r1ci_jax.rl.config import GRPOConfig
from r1ci_jax.rl.loop import run_grpo
from r1ci_jax.tokenizer import train_tokenizer

CORPUS = ["Compute 12 * 34.", "```python\nprint(12*34)\n```\n", "Code Execution Results:\n408\n", "<<<408>>>"] * 30


def test_two_grpo_steps_with_real_rollouts(tmp_path):
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, extra_tokens=["```python\n", "```\n"])
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    cfg = {
        "model": {"architecture": dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2,
                                       num_heads=4, num_kv_heads=2, rope_theta=10000.0,
                                       eos_token_id=tokenizer.eos_token_id),
                  "compute_dtype": "float32", "param_dtype": "float32", "tokenizer": str(tmp_path / "tok")},
        "rollout": {"factory": "r1ci_jax.rollout:make_rollout",
                    "options": {"max_len": 160, "num_workers": 2, "eval_n": 3,
                                "rollout": {"max_total_tokens": 48, "chunk_steps": 16, "exec_timeout_s": 2.0}}},
        "prompts": {"factory": "r1ci_jax.rl.prompts:grain_prompts",
                    "options": {"mixture": {"tasks": [{"task": "multiplication",
                                                       "options": {"digits_a": 2, "digits_b": 2}}]},
                                "split": "train", "seed": 0, "max_prompt_tokens": 64, "system_prompt": "none",
                                "read_threads": 0}},
        "optimizer": {"learning_rate": 1e-3},
        "batch": {"prompts_per_step": 2, "group_size": 4, "mini_batch_prompts": 2, "micro_batch_size": 8,
                  "pad_multiple": 16, "max_length": 256},
        "loop": {"output_dir": str(tmp_path / "run"), "total_steps": 2, "eval_every": 2, "checkpoint_every": 0,
                 "export_hf": False, "progress": False, "tensorboard": False},
    }
    records = run_grpo(from_dict(GRPOConfig, cfg), tokenizer=tokenizer)
    assert len(records) == 2
    for r in records:
        assert np.isfinite(r["loss"])
        assert r["rollout/episodes"] == 8 and r["rollout/tokens_sampled"] > 0
        assert {"rollout/exec_ok", "rollout/exec_failure_rate", "rollout/code_calls_per_episode", "kl"} <= set(r)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("multiplication/code_accuracy" in l for l in lines)
