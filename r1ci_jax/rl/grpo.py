"""GRPO: group-relative advantages and the clipped policy loss with a k3 KL penalty.

    A_i = (r_i - mean_g) / (std_g + eps)          within the group g of episode i
    ratio_t = exp(logp_t - old_logp_t)
    pg_t = max(-A ratio_t, -A clip(ratio_t, 1 - clip_eps, 1 + clip_eps_high))
    kl_t = clamp(exp(ref_t - logp_t) - (ref_t - logp_t) - 1, -kl_clamp, kl_clamp)   (k3, "low_var_kl")
    loss = agg(pg) + kl_coef * agg(kl) - entropy_coef * agg(entropy)

Everything is masked by `loss_mask` (1 only on sampled tokens), so prompt, tool
output and padding contribute nothing, not even to the normalizer.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# "token-mean": sum over all tokens / number of tokens (the paper's setting).
# "seq-mean-token-sum": per-sequence token sums, averaged over sequences.
# "seq-mean-token-mean": per-sequence token means, averaged over sequences.
# "seq-mean-token-sum-norm": Dr.GRPO, sum over all tokens / (num sequences * constant length).
LOSS_AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

# Log-ratios are clamped before exp so that masked garbage never overflows (0 * inf = nan).
_LOG_RATIO_CLAMP = 20.0


class GroupError(ValueError):
    """Episodes are not grouped as expected (missing or duplicated group ids)."""


def group_advantages(rewards: np.ndarray, group_ids: np.ndarray, eps: float = 1e-6, *,
                     group_size: int | None = None, expected_group_ids: Sequence[int] | None = None,
                     normalize_std: bool = True, ddof: int = 1) -> np.ndarray:
    """GRPO advantages (r - mean) / (std + eps) within each group: f32[B].

    rewards: f32[B]; group_ids: int[B]. Groups are the sets of rows with equal ids, in
    any order: row position never matters. A group whose rewards are all equal
    (including a group of one) gets advantage exactly 0. std uses `ddof` (1: the
    unbiased estimate, as torch.std in verl, which the paper used); normalize_std=False
    gives Dr.GRPO's r - mean.

    Checks, each raising GroupError naming the ids at fault:
      group_size: every group must have exactly this many episodes. A group with
        more is a duplicate id (two prompts sharing an id, or a prompt sent twice);
        a group with fewer has missing episodes.
      expected_group_ids: the set of ids must equal this set (ids of the prompts
        sent to the rollout); extra ids or absent ids are errors.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    group_ids = np.asarray(group_ids)
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise GroupError(f"rewards {rewards.shape} and group_ids {group_ids.shape} must both be [B]")
    if not np.issubdtype(group_ids.dtype, np.integer):
        raise GroupError(f"group_ids must be integers, got dtype {group_ids.dtype}")
    ids, inverse, counts = np.unique(group_ids, return_inverse=True, return_counts=True)
    if group_size is not None:
        wrong = counts != group_size
        if wrong.any():
            detail = ", ".join(f"id {i}: {c}" for i, c in zip(ids[wrong][:8], counts[wrong][:8]))
            raise GroupError(f"expected {group_size} episodes per group id; got {detail} "
                             "(more = duplicated id, fewer = missing episodes)")
    if expected_group_ids is not None:
        expected = np.unique(np.asarray(expected_group_ids))
        extra = np.setdiff1d(ids, expected)
        absent = np.setdiff1d(expected, ids)
        if extra.size or absent.size:
            raise GroupError(f"group ids do not match the prompts sent: unexpected {extra[:8].tolist()}, "
                             f"missing {absent[:8].tolist()}")
    n = len(ids)
    sums = np.bincount(inverse, weights=rewards, minlength=n)
    means = sums / counts
    centred = rewards - means[inverse]
    sq = np.bincount(inverse, weights=centred * centred, minlength=n)
    dof = np.maximum(counts - ddof, 1)
    stds = np.sqrt(sq / dof)
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    np.minimum.at(lo, inverse, rewards)
    np.maximum.at(hi, inverse, rewards)
    constant = (hi == lo)[inverse]
    adv = centred / (stds[inverse] + eps) if normalize_std else centred
    return np.where(constant, 0.0, adv).astype(np.float32)


def aggregate(values: jax.Array, mask: jax.Array, loss_agg: str = "token-mean", *,
              num_tokens: jax.Array | float | None = None, num_seqs: jax.Array | float | None = None,
              norm_length: float | None = None) -> jax.Array:
    """Masked reduction of values f32[B, T] to a scalar by `loss_agg` (see LOSS_AGGS).

    num_tokens / num_seqs default to this batch's; pass the whole batch's when `values`
    is one micro-batch, so that micro-batch results add up to the full-batch value.
    norm_length: Dr.GRPO's constant (default T).
    """
    masked = values * mask
    if loss_agg == "token-mean":
        denom = jnp.sum(mask) if num_tokens is None else num_tokens
        return jnp.sum(masked) / jnp.maximum(denom, 1.0)
    seqs = values.shape[0] if num_seqs is None else num_seqs
    if loss_agg == "seq-mean-token-sum":
        return jnp.sum(masked) / seqs
    if loss_agg == "seq-mean-token-mean":
        per_seq = jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
        return jnp.sum(per_seq) / seqs
    if loss_agg == "seq-mean-token-sum-norm":
        length = values.shape[-1] if norm_length is None else norm_length
        return jnp.sum(masked) / (seqs * length)
    raise ValueError(f"unknown loss_agg {loss_agg!r}; known: {list(LOSS_AGGS)}")


def grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array, ref_logprobs: jax.Array | None,
              advantages: jax.Array, loss_mask: jax.Array, clip_eps: float = 0.2, kl_coef: float = 0.001,
              loss_agg: str = "token-mean", *, clip_eps_high: float | None = None, kl_clamp: float = 10.0,
              entropy: jax.Array | None = None, entropy_coef: float = 0.0, norm_length: float | None = None,
              num_tokens: jax.Array | float | None = None, num_seqs: jax.Array | float | None = None,
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO objective (to minimise) and its metrics.

    logprobs, old_logprobs, ref_logprobs, loss_mask, entropy: f32[B, T] (position t =
    token t); advantages: f32[B]. ref_logprobs may be None only when kl_coef == 0;
    entropy None means no bonus. clip_eps_high: upper clip (DAPO clip-higher; default
    clip_eps). num_tokens / num_seqs: totals of the whole batch when this is a
    micro-batch (see `aggregate`); then loss and every metric not ending in _max/_min
    add up over micro-batches to the full-batch value.

    Metrics: pg_loss, kl, entropy, clip_frac (tokens whose clipped branch is active),
    ppo_kl (mean old - new logprob), ratio_mean, ratio_max, ratio_min.
    """
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; known: {list(LOSS_AGGS)}")
    if ref_logprobs is None and kl_coef != 0:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = loss_mask.astype(jnp.float32)
    agg = lambda v: aggregate(v, mask, loss_agg, num_tokens=num_tokens, num_seqs=num_seqs, norm_length=norm_length)
    tokens = jnp.sum(mask) if num_tokens is None else num_tokens
    token_mean = lambda v: jnp.sum(v * mask) / jnp.maximum(tokens, 1.0)

    log_ratio = jnp.clip(logprobs - old_logprobs, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    adv = advantages.astype(jnp.float32)[:, None]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
    pg = jnp.maximum(unclipped, clipped)
    pg_loss = agg(pg)
    loss = pg_loss

    if ref_logprobs is not None:
        ref_log_ratio = jnp.clip(ref_logprobs - logprobs, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        kl = jnp.clip(jnp.exp(ref_log_ratio) - ref_log_ratio - 1.0, -kl_clamp, kl_clamp)
        kl_agg = agg(kl)
        if kl_coef:
            loss = loss + kl_coef * kl_agg
        kl_metric = token_mean(kl)
    else:
        kl_metric = jnp.zeros((), jnp.float32)
    if entropy is not None:
        if entropy_coef:
            loss = loss - entropy_coef * agg(entropy)
        entropy_metric = token_mean(entropy)
    else:
        entropy_metric = jnp.zeros((), jnp.float32)

    on = mask > 0
    metrics = {
        "pg_loss": pg_loss,
        "kl": kl_metric,
        "entropy": entropy_metric,
        "clip_frac": token_mean((clipped > unclipped).astype(jnp.float32)),
        "ppo_kl": token_mean(-log_ratio),
        "ratio_mean": token_mean(ratio),
        "ratio_max": jnp.max(jnp.where(on, ratio, -jnp.inf)),
        "ratio_min": jnp.min(jnp.where(on, ratio, jnp.inf)),
    }
    return loss, metrics
