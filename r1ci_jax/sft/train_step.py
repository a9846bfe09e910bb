"""SFT loss (next-token NLL on assistant tokens only) and the jitted, sharded update.

batch (global arrays, rows sharded over the mesh's batch axes): tokens, segment_ids,
positions int32[B, T] and loss_mask f32[B, T] (see sft.packing).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.sft.forward import packed_token_logprobs
from r1ci_jax.train.state import TrainState
from r1ci_jax.train.step import train_update

BATCH_KEYS = ("tokens", "loss_mask", "segment_ids", "positions")


def sft_loss(params: Any, config: Qwen2Config, batch: dict[str, jax.Array], num_tokens: jax.Array | None = None,
             chunk_size: int = 256) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum of -log p over loss_mask tokens / num_tokens (default: this batch's count).

    Pass the whole batch's token count for a micro-batch, so micro-batch losses add up.
    """
    logp = packed_token_logprobs(params, config, batch["tokens"], batch["segment_ids"], batch["positions"],
                                 chunk_size)
    mask = batch["loss_mask"]
    tokens = jnp.sum(mask)
    denom = jnp.maximum(tokens if num_tokens is None else num_tokens, 1.0)
    return -jnp.sum(logp * mask) / denom, {"loss_tokens": tokens}


def make_sft_step(config: Qwen2Config, optimizer: optax.GradientTransformation, num_micro_batches: int,
                  chunk_size: int = 256, state_shardings: TrainState | None = None,
                  donate: bool = True) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]:
    """jit((state, batch) -> (state, metrics)): one optimizer update on the whole batch,
    gradients accumulated over `num_micro_batches`."""
    def step(state: TrainState, batch: dict[str, jax.Array]):
        batch = {k: batch[k] for k in BATCH_KEYS}
        num_tokens = jnp.sum(batch["loss_mask"])
        loss_fn = lambda p, mb: sft_loss(p, config, mb, num_tokens, chunk_size)
        return train_update(state, batch, loss_fn, optimizer, num_micro_batches)

    donate_argnums = (0,) if donate else ()
    if state_shardings is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    return jax.jit(step, in_shardings=(state_shardings, None), out_shardings=(state_shardings, None),
                   donate_argnums=donate_argnums)


def make_eval_step(config: Qwen2Config, chunk_size: int = 256) -> Callable[[Any, dict[str, jax.Array]], tuple]:
    """jit((params, batch) -> (nll summed over loss tokens, number of loss tokens))."""
    def evaluate(params, batch):
        logp = packed_token_logprobs(params, config, batch["tokens"], batch["segment_ids"], batch["positions"],
                                     chunk_size)
        return -jnp.sum(logp * batch["loss_mask"]), jnp.sum(batch["loss_mask"])
    return jax.jit(evaluate)
