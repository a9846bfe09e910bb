"""The jitted, sharded GRPO update: one call per rollout batch.

    state, metrics = step(state, ref_params, batch)

batch (global arrays, rows sharded over the mesh's batch axes):
    tokens int32[B, T], attention_mask int32[B, T], loss_mask f32[B, T],
    old_logprobs f32[B, T], advantages f32[B]

Inside one program: (1) optionally recompute the behaviour logprobs with the current
params and (2) the reference logprobs with the frozen reference params, forward-only,
micro-batch by micro-batch; then (3) for each of `num_mini_batches` mini-batches, the
GRPO loss and its gradient accumulated over micro-batches, clipped, and one AdamW
update. Mini-batch m holds rows m, m + M, ... (see train.step.split_rows).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.rl.config import GRPOLossConfig
from r1ci_jax.rl.grpo import grpo_loss
from r1ci_jax.rl.logprobs import token_logprobs, token_logprobs_and_entropy
from r1ci_jax.train.state import TrainState
from r1ci_jax.train.step import (accumulate_gradients, apply_gradients, merge_rows, reduce_stacked_metrics,
                                 split_rows)

BATCH_KEYS = ("tokens", "attention_mask", "loss_mask", "old_logprobs", "advantages")


def forward_logprobs(params: Any, config: Qwen2Config, batch: dict[str, jax.Array], num_micro_batches: int,
                     temperature: float, chunk_size: int) -> jax.Array:
    """token_logprobs of the whole batch, `num_micro_batches` rows at a time (no gradient)."""
    params = jax.lax.stop_gradient(params)
    one = lambda mb: token_logprobs(params, config, mb["tokens"], mb["attention_mask"], temperature, chunk_size)
    inputs = {"tokens": batch["tokens"], "attention_mask": batch["attention_mask"]}
    if num_micro_batches == 1:
        return one(inputs)
    return merge_rows(jax.lax.map(one, split_rows(inputs, num_micro_batches)))


def grpo_micro_loss(params: Any, config: Qwen2Config, loss_cfg: GRPOLossConfig, mb: dict[str, jax.Array],
                    num_tokens: jax.Array, num_seqs: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One micro-batch's contribution to the mini-batch GRPO loss (normalised by its totals)."""
    logp, entropy = token_logprobs_and_entropy(params, config, mb["tokens"], mb["attention_mask"],
                                               loss_cfg.temperature, loss_cfg.logprob_chunk, with_entropy=True)
    if not loss_cfg.entropy_coef:
        entropy = jax.lax.stop_gradient(entropy)  # logged, not optimised
    return grpo_loss(logp, mb["old_logprobs"], mb.get("ref_logprobs"), mb["advantages"], mb["loss_mask"],
                     clip_eps=loss_cfg.clip_eps, kl_coef=loss_cfg.kl_coef, loss_agg=loss_cfg.loss_agg,
                     clip_eps_high=loss_cfg.clip_eps_high, kl_clamp=loss_cfg.kl_clamp, entropy=entropy,
                     entropy_coef=loss_cfg.entropy_coef, norm_length=loss_cfg.norm_length,
                     num_tokens=num_tokens, num_seqs=num_seqs)


def grpo_update(state: TrainState, ref_params: Any | None, batch: dict[str, jax.Array], *, config: Qwen2Config,
                loss_cfg: GRPOLossConfig, optimizer: optax.GradientTransformation, num_mini_batches: int,
                num_micro_batches: int, recompute_old_logprobs: bool) -> tuple[TrainState, dict[str, jax.Array]]:
    """Pure GRPO step (see module doc). Metrics are averaged over mini-batches (max/min for *_max/*_min)."""
    batch = {k: batch[k] for k in BATCH_KEYS}
    mask = batch["loss_mask"]
    forward_parts = num_mini_batches * num_micro_batches
    if recompute_old_logprobs:
        batch["old_logprobs"] = forward_logprobs(state.params, config, batch, forward_parts, loss_cfg.temperature,
                                                 loss_cfg.logprob_chunk) * mask
    if ref_params is not None:
        batch["ref_logprobs"] = forward_logprobs(ref_params, config, batch, forward_parts, loss_cfg.temperature,
                                                 loss_cfg.logprob_chunk) * mask

    def update(carry, mini):
        params, opt_state = carry
        num_tokens = jnp.sum(mini["loss_mask"])
        num_seqs = float(mini["loss_mask"].shape[0])
        loss_fn = lambda p, mb: grpo_micro_loss(p, config, loss_cfg, mb, num_tokens, num_seqs)
        loss, grads, metrics = accumulate_gradients(loss_fn, params, mini, num_micro_batches)
        params, opt_state, extra = apply_gradients(params, opt_state, grads, optimizer)
        return (params, opt_state), {"loss": loss, **metrics, **extra}

    minis = split_rows(batch, num_mini_batches)
    (params, opt_state), stacked = jax.lax.scan(update, (state.params, state.opt_state), minis)
    metrics = reduce_stacked_metrics(stacked)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng), metrics


def make_grpo_step(config: Qwen2Config, loss_cfg: GRPOLossConfig, optimizer: optax.GradientTransformation, *,
                   num_mini_batches: int, num_micro_batches: int, recompute_old_logprobs: bool = True,
                   state_shardings: TrainState | None = None, ref_shardings: Any = None,
                   donate: bool = True) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """jit(grpo_update) with the state's shardings pinned (inputs and outputs) and the
    old state's buffers donated. Without shardings, placement follows the inputs."""
    def step(state, ref_params, batch):
        return grpo_update(state, ref_params, batch, config=config, loss_cfg=loss_cfg, optimizer=optimizer,
                           num_mini_batches=num_mini_batches, num_micro_batches=num_micro_batches,
                           recompute_old_logprobs=recompute_old_logprobs)

    donate_argnums = (0,) if donate else ()
    if state_shardings is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    return jax.jit(step, in_shardings=(state_shardings, ref_shardings, None),
                   out_shardings=(state_shardings, None), donate_argnums=donate_argnums)
