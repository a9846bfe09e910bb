"""Micro-batching with gradient accumulation, and the optimizer update.

A loss function here returns its micro-batch's *contribution* to the full-batch loss
(normalised by whole-batch totals), so summing over micro-batches gives exactly the
full-batch loss and gradient, up to float summation order.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from r1ci_jax.train.state import TrainState

Metrics = dict[str, jax.Array]
# loss_fn(params, micro_batch) -> (loss contribution, metrics contributions)
LossFn = Callable[[Any, Any], tuple[jax.Array, Metrics]]


def split_rows(batch: Any, parts: int) -> Any:
    """[B, ...] -> [parts, B / parts, ...], part m holding rows m, m + parts, m + 2 parts, ...

    Strided rather than contiguous: with the batch sharded over devices, every device
    holds an equal share of every part, so no data moves between devices.
    """
    def split(x):
        if x.shape[0] % parts:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {parts} equal parts")
        return x.reshape(x.shape[0] // parts, parts, *x.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, batch)


def merge_rows(parts: Any) -> Any:
    """Inverse of `split_rows`: [parts, B / parts, ...] -> [B, ...] in the original row order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), parts)


def combine_metrics(a: Metrics, b: Metrics) -> Metrics:
    """Merge micro-batch metrics: max for keys ending in _max, min for _min, sum otherwise."""
    out = {}
    for key in a:
        if key.endswith("_max"):
            out[key] = jnp.maximum(a[key], b[key])
        elif key.endswith("_min"):
            out[key] = jnp.minimum(a[key], b[key])
        else:
            out[key] = a[key] + b[key]
    return out


def reduce_stacked_metrics(stacked: Metrics) -> Metrics:
    """Metrics stacked over sequential updates [N] -> one value: max/min/mean by key suffix."""
    out = {}
    for key, value in stacked.items():
        if key.endswith("_max"):
            out[key] = jnp.max(value)
        elif key.endswith("_min"):
            out[key] = jnp.min(value)
        else:
            out[key] = jnp.mean(value)
    return out


def accumulate_gradients(loss_fn: LossFn, params: Any, batch: Any, num_micro_batches: int,
                         ) -> tuple[jax.Array, Any, Metrics]:
    """(loss, grads f32, metrics) of the full batch, computed `num_micro_batches` rows at a time."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    to_f32 = lambda tree: jax.tree.map(lambda g: g.astype(jnp.float32), tree)
    if num_micro_batches == 1:
        (loss, metrics), grads = grad_fn(params, batch)
        return loss, to_f32(grads), metrics

    micro = split_rows(batch, num_micro_batches)
    first = jax.tree.map(lambda x: x[0], micro)
    rest = jax.tree.map(lambda x: x[1:], micro)
    (loss, metrics), grads = grad_fn(params, first)

    def body(carry, mb):
        loss_acc, grads_acc, metrics_acc = carry
        (loss, metrics), grads = grad_fn(params, mb)
        grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
        return (loss_acc + loss, grads_acc, combine_metrics(metrics_acc, metrics)), None

    (loss, grads, metrics), _ = jax.lax.scan(body, (loss, to_f32(grads), metrics), rest)
    return loss, grads, metrics


def apply_gradients(params: Any, opt_state: Any, grads: Any, optimizer: optax.GradientTransformation,
                    ) -> tuple[Any, Any, Metrics]:
    """One optimizer update; grads are cast to each param's dtype first. Returns grad_norm too."""
    grad_norm = optax.tree.norm(grads)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"grad_norm": grad_norm}


def train_update(state: TrainState, batch: Any, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                 num_micro_batches: int) -> tuple[TrainState, Metrics]:
    """Gradient of the whole batch (accumulated over micro-batches), then one update; step += 1."""
    loss, grads, metrics = accumulate_gradients(loss_fn, state.params, batch, num_micro_batches)
    params, opt_state, extra = apply_gradients(state.params, state.opt_state, grads, optimizer)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
    return new_state, {"loss": loss, **metrics, **extra}
