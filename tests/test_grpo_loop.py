"""The `r1ci grpo` loop end to end with a scripted rollout: metrics, checkpoints,
TensorBoard files, HF export, and kill -9 + --resume replaying the run exactly.

The fake rollout samples from the policy itself with a tiny pure-JAX sampler, splices
in scripted "tool output" tokens (loss_mask 0) between two sampled segments, and
rewards episodes by the share of sampled tokens below vocab/2. It is importable as
`test_grpo_loop:fake_rollout_plugins` / `test_grpo_loop:fake_prompts` by the CLI.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from r1ci_jax.models.qwen2 import forward
from r1ci_jax.rl.batch import EpisodeBatch
from r1ci_jax.rl.interfaces import PluginContext, RLPlugins

PROMPT_LEN, FIRST_SAMPLE, TOOL_LEN = 4, 3, 2
ARCH = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            rope_theta=10000.0)
TOTAL_STEPS = 6


# ----------------------------------------------------------------------------- fakes

class FakePrompts:
    """Deterministic prompt batches; state = number of batches handed out."""

    def __init__(self, prompts_per_step: int, group_size: int, vocab: int, seed: int = 0):
        self.prompts_per_step, self.group_size, self.vocab, self.seed = prompts_per_step, group_size, vocab, seed
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.index])
        ids = np.arange(self.index * self.prompts_per_step, (self.index + 1) * self.prompts_per_step)
        prompts = rng.integers(2, self.vocab, (self.prompts_per_step, PROMPT_LEN)).astype(np.int32)
        self.index += 1
        return {"group_ids": np.repeat(ids, self.group_size),
                "prompt_tokens": np.repeat(prompts, self.group_size, axis=0)}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def fake_prompts(ctx: PluginContext) -> FakePrompts:
    return FakePrompts(ctx.config.batch.prompts_per_step, ctx.config.batch.group_size, ctx.model_config.vocab_size)


def episode_layout(batch: int, second_segment: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """kind[b, t]: 0 prompt, 1 sampled, 2 tool output, 3 padding (rows differ in length)."""
    longest = PROMPT_LEN + FIRST_SAMPLE + TOOL_LEN + max(second_segment)
    kinds = np.full((batch, longest), 3, np.int32)
    for b in range(batch):
        row = [0] * PROMPT_LEN + [1] * FIRST_SAMPLE + [2] * TOOL_LEN + [1] * second_segment[b % len(second_segment)]
        kinds[b, :len(row)] = row
    return kinds


@functools.partial(jax.jit, static_argnums=(1, 5))
def sample_episodes(params, config, prompt_tokens, kinds, rng, temperature):
    """Fill kinds==1 positions by sampling from the policy, kinds==2 by a scripted tool."""
    B, T = kinds.shape
    tokens = jnp.zeros((B, T), jnp.int32).at[:, :PROMPT_LEN].set(prompt_tokens)
    attention = (kinds != 3).astype(jnp.int32)

    def body(t, carry):
        tokens, logps = carry
        logits = forward(params, config, tokens, attention_mask=attention)[0][:, t - 1] / temperature
        logp_all = jax.nn.log_softmax(logits)
        drawn = jax.random.categorical(jax.random.fold_in(rng, t), logits)
        tool = (tokens[:, t - 1] * 7 + 3) % config.vocab_size
        kind = kinds[:, t]
        new = jnp.where(kind == 1, drawn, jnp.where(kind == 2, tool, tokens[:, t]))
        logp = jnp.where(kind == 1, jnp.take_along_axis(logp_all, drawn[:, None], axis=1)[:, 0], 0.0)
        return tokens.at[:, t].set(new), logps.at[:, t].set(logp)

    tokens, logps = jax.lax.fori_loop(PROMPT_LEN, T, body, (tokens, jnp.zeros((B, T), jnp.float32)))
    return tokens, logps


def fake_rollout_plugins(ctx: PluginContext) -> RLPlugins:
    config, temperature = ctx.model_config, ctx.config.loss.temperature
    delay = float(ctx.options.get("delay_s", 0.0))

    def rollout(params, prompts, rng):
        time.sleep(delay)  # stands in for generation time, so a kill lands mid-run
        kinds = episode_layout(len(prompts["group_ids"]))
        tokens, logps = jax.device_get(sample_episodes(params, config, prompts["prompt_tokens"], kinds,
                                                       np.asarray(rng), temperature))
        sampled = kinds == 1
        rewards = ((tokens < config.vocab_size // 2) & sampled).sum(1) / sampled.sum(1)
        batch = EpisodeBatch.from_arrays(tokens=tokens, attention_mask=kinds != 3, loss_mask=sampled,
                                         old_logprobs=np.where(sampled, logps, 0.0), rewards=rewards,
                                         group_ids=prompts["group_ids"])
        return batch, {"episodes": float(len(rewards))}

    def evaluate(params, rng, step):
        rows = ctx.config.batch.episodes_per_step  # the rollout's shape: no second compile
        kinds = episode_layout(rows)
        prompts = np.tile(np.arange(2, 2 + PROMPT_LEN, dtype=np.int32), (rows, 1))
        tokens = np.asarray(sample_episodes(params, config, prompts, kinds, np.asarray(rng), temperature)[0])
        return {"low_token_share": float(((tokens < config.vocab_size // 2) & (kinds == 1)).sum() / (kinds == 1).sum())}

    return RLPlugins(rollout=rollout, evaluate=evaluate)


def run_config(output_dir: Path, **loop) -> dict:
    return {
        "model": {"architecture": ARCH, "compute_dtype": "float32", "param_dtype": "float32"},
        "rollout": {"factory": "test_grpo_loop:fake_rollout_plugins", "options": {}},
        "prompts": {"factory": "test_grpo_loop:fake_prompts"},
        "mesh": {"mesh": {"data": 2, "fsdp": 2, "tensor": 2}},
        "optimizer": {"learning_rate": 1e-2, "warmup_steps": 2, "weight_decay": 0.01},
        "loss": {"kl_coef": 0.01, "entropy_coef": 0.001, "temperature": 1.0, "logprob_chunk": 8},
        "batch": {"prompts_per_step": 4, "group_size": 2, "mini_batch_prompts": 2, "micro_batch_size": 4,
                  "pad_multiple": 8},
        "loop": {"output_dir": str(output_dir), "total_steps": TOTAL_STEPS, "checkpoint_every": 2,
                 "eval_every": 3, "keep_checkpoints": 2, "export_hf": False, "progress": False, **loop},
    }


def losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    steps = [r["step"] for r in train]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in train}


def _cli(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "r1ci_jax.cli", "grpo", "--config", str(config_path), *extra]


def _env(cache_dir: Path) -> dict:
    # Every run reuses the first one's compiled programs through JAX's persistent cache
    # (the same executables, so exactness is unaffected) instead of compiling again.
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
            "JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir):
    """An uninterrupted `r1ci grpo` run that exports HF weights at the end."""
    out = tmp_path_factory.mktemp("grpo_ref")
    config_path = _write_config(out / "grpo.yaml", run_config(out / "run", export_hf=True))
    proc = subprocess.run(_cli(config_path), env=_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"done: {TOTAL_STEPS} step(s)" in proc.stdout
    from r1ci_jax.train.metrics import read_metrics
    return out / "run", read_metrics(out / "run" / "metrics.jsonl")


def test_loop_writes_metrics_checkpoints_tensorboard_and_export(reference_run):
    out, records = reference_run
    assert len(records) == TOTAL_STEPS
    for key in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "ratio_max", "grad_norm", "reward_mean",
                "tokens_per_s", "lr", "rollout/episodes"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert records[0]["kl"] == 0.0 and records[-1]["kl"] > 0  # the policy moves away from the reference
    assert records[0]["lr"] == 0.0 and records[2]["lr"] > 0  # warmup
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["split"] == "eval"] == [3, 6]
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [4, 6]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    from r1ci_jax.checkpoint.hf import load_hf
    from r1ci_jax.train.checkpoint import TrainCheckpointer
    _, exported = load_hf(out / "hf")
    ckpt = TrainCheckpointer(out / "checkpoints")
    try:
        import orbax.checkpoint as ocp
        final = ckpt._manager.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        ckpt.close()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), exported,
                 final["params"])


def _complete_steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.exists() else []


def test_kill9_then_resume_replays_the_run_exactly(reference_run, cache_dir, tmp_path):
    ref_dir, _ = reference_run
    expected = losses(ref_dir)
    out = tmp_path / "run"
    cfg = run_config(out)
    cfg["rollout"]["options"] = {"delay_s": 0.4}
    config_path = _write_config(tmp_path / "grpo.yaml", cfg)
    env = _env(cache_dir)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(_cli(config_path), env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while not _complete_steps(out / "checkpoints") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    killed_at = _complete_steps(out / "checkpoints")[-1]
    assert killed_at < TOTAL_STEPS, "the run finished before it was killed"
    assert max(losses(out)) < TOTAL_STEPS

    from r1ci_jax.config import ConfigError, from_dict
    from r1ci_jax.rl.config import GRPOConfig
    from r1ci_jax.rl.loop import run_grpo
    with pytest.raises(ConfigError, match="already holds checkpoints .* pass --resume"):
        run_grpo(from_dict(GRPOConfig, cfg))

    resumed = subprocess.run(_cli(config_path, "--resume", "--set", "rollout.options.delay_s=0"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    got = losses(out)
    assert sorted(got) == list(range(1, TOTAL_STEPS + 1))
    assert got == expected  # exactly: same data, same rng, same params after restore
