"""The GRPO training loop behind `r1ci grpo`.

Each step: next prompt batch -> rollout with the live params (cast on device to the
sampler dtype) -> group advantages -> one jitted update (old / reference logprobs,
mini-batch AdamW updates) -> metrics (jsonl, TensorBoard, progress bar) -> eval and
async checkpoint when due. Everything a step depends on (params, optimizer state,
step, rng, the prompt iterator's position) is in the checkpoint, so `resume=True`
replays the remaining steps exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from r1ci_jax.config import ConfigError, to_dict
from r1ci_jax.rl.batch import EpisodeBatch
from r1ci_jax.rl.config import GRPOConfig
from r1ci_jax.rl.grpo import group_advantages
from r1ci_jax.rl.interfaces import PluginContext, PromptSource, RLPlugins, split_rollout_output
from r1ci_jax.rl.train_step import make_grpo_step
from r1ci_jax.sharding import host_batch_to_global, is_main_process, make_mesh, param_shardings
from r1ci_jax.train.checkpoint import open_run_checkpointer
from r1ci_jax.train.export import export_hf
from r1ci_jax.train.loop import Progress, Stopwatch, due, load_object
from r1ci_jax.train.metrics import MetricsWriter
from r1ci_jax.train.model import load_model, load_tokenizer
from r1ci_jax.train.optim import make_optimizer
from r1ci_jax.train.state import restore_or_create_state, state_shardings

PROGRESS_KEYS = ("reward_mean", "kl", "loss", "tokens_per_s")


def run_grpo(config: GRPOConfig, *, plugins: RLPlugins | None = None, prompts: PromptSource | None = None,
             resume: bool = False, tokenizer: Any = None) -> list[dict[str, Any]]:
    """Train; returns the train metrics of the steps run in this call.

    plugins / prompts default to the factories named in the config (`rollout.factory`,
    `prompts.factory`). resume=True continues from the latest checkpoint in
    loop.output_dir (or starts fresh when there is none); without it an existing
    checkpoint is an error, so a run is never silently overwritten.
    """
    config.check()
    batch_cfg, loss_cfg, loop_cfg = config.batch, config.loss, config.loop
    with contextlib.ExitStack() as cleanup:
        checkpointer, latest = open_run_checkpointer(loop_cfg, resume, cleanup)
        mesh = make_mesh(config.mesh.mesh)
        rules = config.mesh.rules
        _check_batch_fits_mesh(batch_cfg, mesh)
        model_config, params = load_model(config.model, mesh, rules)
        if tokenizer is None:
            tokenizer = load_tokenizer(config.model)

        num_mini, num_micro = batch_cfg.num_mini_batches, batch_cfg.num_micro_batches
        optimizer, schedule = make_optimizer(config.optimizer, loop_cfg.total_steps * num_mini)
        p_shardings = param_shardings(model_config, mesh, rules)
        s_shardings = state_shardings(p_shardings, optimizer, params, mesh)
        cast = lambda dtype: jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p), out_shardings=p_shardings)
        # The reference is the initial policy, stored in the compute dtype: the forward
        # pass casts weights to it anyway, so its logprobs are unchanged.
        ref_params = cast(model_config.jnp_dtype)(params) if loss_cfg.kl_coef else None
        sampler_config = dataclasses.replace(model_config, param_dtype=config.sampler_dtype or model_config.dtype)
        to_sampler = cast(sampler_config.param_jnp_dtype)
        split_rng = jax.jit(lambda key: tuple(jax.random.split(key)), out_shardings=(s_shardings.rng,) * 2)
        step_fn = make_grpo_step(model_config, loss_cfg, optimizer, num_mini_batches=num_mini,
                                 num_micro_batches=num_micro,
                                 recompute_old_logprobs=batch_cfg.recompute_old_logprobs, state_shardings=s_shardings,
                                 ref_shardings=p_shardings if ref_params is not None else None)

        ctx = lambda options: PluginContext(config=config, model_config=sampler_config, mesh=mesh,
                                            tokenizer=tokenizer, options=dict(options))
        if plugins is None:
            plugins = load_object(config.rollout.factory, "rollout.factory")(ctx(config.rollout.options))
        if plugins.close is not None:
            cleanup.callback(plugins.close)
        if prompts is None:
            prompts = load_object(config.prompts.factory, "prompts.factory")(ctx(config.prompts.options))
        writer = MetricsWriter(loop_cfg.output_dir, enabled=is_main_process(), tensorboard=loop_cfg.tensorboard)
        cleanup.callback(writer.close)

        state, start = restore_or_create_state(checkpointer, latest, params, optimizer, loop_cfg.seed,
                                               s_shardings, prompts, writer)
        del params

        records: list[dict[str, Any]] = []
        progress = Progress(loop_cfg.total_steps, start, "grpo", enabled=loop_cfg.progress and is_main_process())
        cleanup.callback(progress.close)
        for step in range(start + 1, loop_cfg.total_steps + 1):
            watch = Stopwatch()
            prompt_batch = next(prompts)
            next_rng, rollout_rng = split_rng(state.rng)
            state = dataclasses.replace(state, rng=next_rng)
            rollout_rng = jax.random.fold_in(rollout_rng, jax.process_index())  # hosts sample differently
            episodes, rollout_metrics = split_rollout_output(plugins.rollout(to_sampler(state.params), prompt_batch,
                                                                             rollout_rng))
            rollout_s = watch.lap()
            episodes.validate(f"rollout of step {step}")
            advantages = _advantages(config, episodes, prompt_batch, step)
            padded = episodes.pad_to_multiple(batch_cfg.pad_multiple, batch_cfg.pad_id)
            if padded.length > batch_cfg.max_length:
                raise ValueError(f"rollout of step {step}: episodes of {episodes.length} tokens exceed "
                                 f"batch.max_length={batch_cfg.max_length}")
            device_batch = host_batch_to_global({
                "tokens": padded.tokens, "attention_mask": padded.attention_mask, "loss_mask": padded.loss_mask,
                "old_logprobs": padded.old_logprobs, "advantages": advantages}, mesh, rules)
            state, step_metrics = step_fn(state, ref_params, device_batch)
            step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            update_s = watch.lap()
            record = {**step_metrics, "lr": float(schedule((step - 1) * num_mini)),
                      **_episode_stats(episodes, rollout_s, update_s),
                      **{f"rollout/{k}": v for k, v in rollout_metrics.items()}}
            records.append(record)
            if due(step, loop_cfg.log_every) or step == loop_cfg.total_steps:
                writer.write(step, record)
            progress.update(record, PROGRESS_KEYS)

            if plugins.evaluate is not None and due(step, loop_cfg.eval_every):
                eval_rng = jax.random.fold_in(jax.random.PRNGKey(loop_cfg.seed + 1), step)
                eval_metrics = {k: float(v) for k, v in plugins.evaluate(to_sampler(state.params), eval_rng,
                                                                         step).items()}
                writer.write(step, eval_metrics, split="eval")
                progress.write(f"step {step} eval: " + ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()))
            if due(step, loop_cfg.checkpoint_every) or step == loop_cfg.total_steps:
                checkpointer.save(step, state, {"data_state": prompts.get_state(), "step": step,
                                                "config": to_dict(config)})
        if loop_cfg.export_hf:
            checkpointer.wait()
            export_hf(state.params, model_config, Path(loop_cfg.output_dir) / "hf", tokenizer)
    return records


def _check_batch_fits_mesh(batch_cfg: Any, mesh: Any) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_cfg.micro_batch_size % shards:
        raise ConfigError(f"batch.micro_batch_size={batch_cfg.micro_batch_size} is not a multiple of the "
                          f"{shards} batch shards (mesh data x fsdp)")
    if batch_cfg.episodes_per_step % jax.process_count():
        raise ConfigError(f"{batch_cfg.episodes_per_step} episodes per step do not split over "
                          f"{jax.process_count()} processes")


def _advantages(config: GRPOConfig, episodes: EpisodeBatch, prompt_batch: Any, step: int) -> np.ndarray:
    expected_rows = config.batch.episodes_per_step // jax.process_count()
    if episodes.batch_size != expected_rows:
        raise ValueError(f"rollout of step {step} returned {episodes.batch_size} episodes; expected {expected_rows} "
                         "(batch.prompts_per_step x batch.group_size / processes)")
    expected_ids = None
    if isinstance(prompt_batch, Mapping) and "group_ids" in prompt_batch:
        expected_ids = np.asarray(prompt_batch["group_ids"])
    return group_advantages(episodes.rewards, episodes.group_ids, config.loss.adv_eps,
                            group_size=config.batch.group_size, expected_group_ids=expected_ids,
                            normalize_std=config.loss.adv_normalize_std)


def _episode_stats(episodes: EpisodeBatch, rollout_s: float, update_s: float) -> dict[str, float]:
    rewards = episodes.rewards
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        rewards = np.asarray(multihost_utils.process_allgather(rewards)).reshape(-1)
    real = episodes.num_real_tokens() * jax.process_count()
    return {
        "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
        "reward_max": float(rewards.max()),
        "sampled_tokens_mean": float(episodes.loss_mask.sum(axis=1).mean()),
        "episode_tokens_mean": float(episodes.attention_mask.sum(axis=1).mean()),
        "tokens_per_s": real / max(rollout_s + update_s, 1e-9),
        "update_tokens_per_s": real / max(update_s, 1e-9),
        "rollout_s": rollout_s, "update_s": update_s,
    }
