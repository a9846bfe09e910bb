"""grpo_loss and group_advantages against NumPy references; gradients; group-id errors;
the EpisodeBatch contract checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1ci_jax.rl.batch import EpisodeBatch
from r1ci_jax.rl.grpo import LOSS_AGGS, GroupError, group_advantages, grpo_loss


# ----------------------------------------------------------------------------- references

def np_group_advantages(rewards, group_ids, eps=1e-6):
    out = np.zeros(len(rewards))
    for g in set(group_ids.tolist()):
        idx = np.flatnonzero(group_ids == g)
        r = rewards[idx].astype(np.float64)
        if np.all(r == r[0]):
            continue
        out[idx] = (r - r.mean()) / (r.std(ddof=1) + eps)
    return out


def np_agg(values, mask, loss_agg, norm_length=None):
    B, T = values.shape
    if loss_agg == "token-mean":
        return (values * mask).sum() / mask.sum()
    if loss_agg == "seq-mean-token-sum":
        return (values * mask).sum(1).mean()
    if loss_agg == "seq-mean-token-mean":
        return ((values * mask).sum(1) / mask.sum(1)).mean()
    if loss_agg == "seq-mean-token-sum-norm":
        return (values * mask).sum() / (B * (norm_length or T))
    raise AssertionError(loss_agg)


def np_grpo_loss(logp, old, ref, adv, mask, clip_eps, clip_high, kl_coef, entropy, entropy_coef, loss_agg):
    ratio = np.exp(logp - old)
    pg = np.maximum(-adv[:, None] * ratio, -adv[:, None] * np.clip(ratio, 1 - clip_eps, 1 + clip_high))
    kl = np.clip(np.exp(ref - logp) - (ref - logp) - 1, -10, 10)
    loss = np_agg(pg, mask, loss_agg) + kl_coef * np_agg(kl, mask, loss_agg) - entropy_coef * np_agg(entropy, mask,
                                                                                                       loss_agg)
    clipped = (-adv[:, None] * np.clip(ratio, 1 - clip_eps, 1 + clip_high)) > (-adv[:, None] * ratio)
    m = mask > 0
    return loss, {"pg_loss": np_agg(pg, mask, loss_agg), "kl": kl[m].mean(), "clip_frac": clipped[m].mean(),
                  "ratio_max": ratio[m].max(), "ratio_min": ratio[m].min(), "entropy": entropy[m].mean()}


def random_inputs(seed, B=6, T=9):
    rng = np.random.default_rng(seed)
    mask = (rng.random((B, T)) < 0.7).astype(np.float32)
    mask[:, 0] = 0
    mask[:, 1] = 1  # every row has a token
    old = -rng.random((B, T)).astype(np.float32) * 3
    logp = old + rng.normal(0, 0.3, (B, T)).astype(np.float32)  # ratios around 1, some clipped
    ref = old + rng.normal(0, 0.3, (B, T)).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    entropy = rng.random((B, T)).astype(np.float32) * 2
    return logp, old, ref, adv, mask, entropy


# ----------------------------------------------------------------------------- loss

@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize("clip_high", [0.2, 0.28])
def test_grpo_loss_matches_numpy(loss_agg, clip_high):
    logp, old, ref, adv, mask, entropy = random_inputs(0)
    loss, metrics = jax.jit(lambda *a: grpo_loss(*a, clip_eps=0.2, kl_coef=0.05, loss_agg=loss_agg,
                                                 clip_eps_high=clip_high, entropy=entropy, entropy_coef=0.01))(
        logp, old, ref, adv, mask)
    ref_loss, ref_metrics = np_grpo_loss(logp, old, ref, adv, mask, 0.2, clip_high, 0.05, entropy, 0.01, loss_agg)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-7)
    for key, value in ref_metrics.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    assert 0 < metrics["clip_frac"] < 1  # the inputs exercise both branches


def test_dr_grpo_constant_normaliser():
    logp, old, ref, adv, mask, _ = random_inputs(1)
    loss, _ = grpo_loss(logp, old, None, adv, mask, kl_coef=0.0, loss_agg="seq-mean-token-sum-norm", norm_length=64)
    ratio = np.exp(logp - old)
    pg = np.maximum(-adv[:, None] * ratio, -adv[:, None] * np.clip(ratio, 0.8, 1.2))
    np.testing.assert_allclose(loss, (pg * mask).sum() / (6 * 64), rtol=1e-6)


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_gradient_is_zero_on_masked_positions(loss_agg):
    logp, old, ref, adv, mask, entropy = random_inputs(2)
    logp = np.where(mask > 0, logp, -1e4).astype(np.float32)  # garbage where masked must not leak (no nan)
    grad = jax.grad(lambda lp: grpo_loss(lp, old, ref, adv, mask, kl_coef=0.1, loss_agg=loss_agg,
                                         entropy=entropy, entropy_coef=0.01)[0])(jnp.asarray(logp))
    grad = np.asarray(grad)
    assert np.all(grad[mask == 0] == 0.0)
    assert np.all(np.isfinite(grad)) and np.any(grad[mask > 0] != 0)


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_gradient_at_ratio_one_is_minus_advantage_over_normaliser(loss_agg):
    _, old, _, adv, mask, _ = random_inputs(3)
    grad = np.asarray(jax.grad(lambda lp: grpo_loss(lp, old, None, adv, mask, kl_coef=0.0, loss_agg=loss_agg)[0])(
        jnp.asarray(old)))
    B, T = mask.shape
    normaliser = {"token-mean": np.full((B, 1), mask.sum()), "seq-mean-token-sum": np.full((B, 1), B),
                  "seq-mean-token-mean": B * mask.sum(1, keepdims=True),
                  "seq-mean-token-sum-norm": np.full((B, 1), B * T)}[loss_agg]
    np.testing.assert_allclose(grad, -adv[:, None] * mask / normaliser, rtol=1e-5, atol=1e-9)


def test_micro_batch_contributions_add_up_to_the_full_batch():
    logp, old, ref, adv, mask, entropy = random_inputs(4, B=8)
    kw = dict(kl_coef=0.05, entropy=None, loss_agg="seq-mean-token-mean")
    full, full_m = grpo_loss(logp, old, ref, adv, mask, **kw)
    parts = [grpo_loss(logp[s], old[s], ref[s], adv[s], mask[s], num_tokens=mask.sum(), num_seqs=8, **kw)
             for s in (slice(0, 4), slice(4, 8))]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], full, rtol=1e-6)
    np.testing.assert_allclose(parts[0][1]["kl"] + parts[1][1]["kl"], full_m["kl"], rtol=1e-6)


def test_kl_needs_reference_and_unknown_agg():
    logp, old, _, adv, mask, _ = random_inputs(5)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        grpo_loss(logp, old, None, adv, mask, kl_coef=0.001)
    with pytest.raises(ValueError, match="unknown loss_agg 'mean'"):
        grpo_loss(logp, old, old, adv, mask, loss_agg="mean")


# ----------------------------------------------------------------------------- advantages

def test_group_advantages_match_numpy_and_ignore_order():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.array([17, 3, 99, 42]), 5)
    rewards = rng.random(20).astype(np.float32)
    rewards[10:15] = 0.5  # group 99: all equal -> 0
    adv = group_advantages(rewards, ids)
    np.testing.assert_allclose(adv, np_group_advantages(rewards, ids), rtol=1e-5, atol=1e-6)
    assert np.all(adv[10:15] == 0.0)
    perm = rng.permutation(20)
    np.testing.assert_array_equal(group_advantages(rewards[perm], ids[perm]), adv[perm])


def test_equal_rewards_give_exact_zero_even_when_mean_is_inexact():
    adv = group_advantages(np.full(3, 0.1, np.float32), np.zeros(3, np.int32))
    assert np.all(adv == 0.0)
    assert group_advantages(np.array([1.0]), np.array([7]))[0] == 0.0  # a group of one


def test_dr_grpo_unscaled_advantages():
    adv = group_advantages(np.array([1.0, 0.0, 0.0, 0.0]), np.zeros(4, np.int64), normalize_std=False)
    np.testing.assert_allclose(adv, [0.75, -0.25, -0.25, -0.25])


def test_group_size_mismatch_names_duplicated_and_missing_ids():
    ids = np.array([1, 1, 2, 2, 2, 2, 3])  # id 2 used by two prompts, id 3 lost an episode
    with pytest.raises(GroupError, match=r"expected 2 episodes per group id; got id 2: 4, id 3: 1"):
        group_advantages(np.zeros(7), ids, group_size=2)


def test_expected_group_ids_mismatch():
    ids = np.array([1, 1, 5, 5])
    with pytest.raises(GroupError, match=r"unexpected \[5\], missing \[2\]"):
        group_advantages(np.zeros(4), ids, expected_group_ids=[1, 1, 2, 2])
    group_advantages(np.zeros(4), ids, group_size=2, expected_group_ids=[5, 1])


def test_group_ids_must_be_integers():
    with pytest.raises(GroupError, match="must be integers"):
        group_advantages(np.zeros(2), np.array([0.0, 1.0]))


# ----------------------------------------------------------------------------- EpisodeBatch

def make_batch(**changes):
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
    attention = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    loss_mask = np.array([[0, 0, 1, 0, 1, 0], [0, 0, 1, 1, 0, 1]], np.float32)  # tool token at [0, 3], [1, 4]
    old = np.where(loss_mask > 0, -0.5, 0.0)
    fields = dict(tokens=tokens, attention_mask=attention, loss_mask=loss_mask, old_logprobs=old,
                  rewards=np.array([1.0, 0.0]), group_ids=np.array([0, 0]))
    fields.update(changes)
    return EpisodeBatch.from_arrays(**fields)


def test_episode_batch_pad_and_pytree():
    batch = make_batch()
    padded = batch.pad_to_multiple(4, pad_id=9)
    assert padded.length == 8 and padded.tokens[0, 6] == 9 and padded.attention_mask[:, 6:].sum() == 0
    assert padded.loss_mask[:, 6:].sum() == 0 and padded.num_sampled_tokens() == batch.num_sampled_tokens()
    leaves = jax.tree.leaves(batch)
    assert len(leaves) == 6
    both = EpisodeBatch.concatenate([batch, padded.take([1])])
    assert both.batch_size == 3 and both.length == 8
    both.validate()


@pytest.mark.parametrize("change, match", [
    (dict(loss_mask=np.array([[1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 0, 1]])), r"loss_mask\[:, 0\] must be 0"),
    (dict(loss_mask=np.array([[0, 0, 1, 0, 1, 1], [0, 0, 1, 1, 0, 1]])), r"loss_mask is 1 on padding in row\(s\) \[0\]"),
    (dict(loss_mask=np.array([[0, 1, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0]])), "mask inverted or missing"),
    (dict(rewards=np.array([np.nan, 0.0])), "rewards must be finite"),
    (dict(group_ids=np.array([0, 0, 1])), r"group_ids has shape \(3,\)"),
])
def test_episode_batch_rejects_broken_masks(change, match):
    with pytest.raises(ValueError, match=match):
        make_batch(**change)
