"""Fused sampling: the Pallas kernel (interpret mode) equals the reference; the reference
samples the truncated distribution (chi-square) and reports full-vocab logprobs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from r1ci_jax.kernels import sampling as ks


def _rows(B, V, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(B, V)) * 3, jnp.float32)
    logits = logits.at[0, :5].set(10.0)  # a 5-way tie at the top of row 0
    seeds = jnp.asarray(rng.integers(-2**31, 2**31 - 1, (B, 2)), jnp.int32)
    return logits, seeds


# Per row: temperature, top_k, top_p (greedy rows, k > V, k = 1, p = 1, tiny p).
ROW_PARAMS = dict(temperature=[1.0, 0.0, 0.7, 1.3, 1.0, 2.0, 0.5, 1.0],
                  top_k=[3, 0, 50, 0, 400, 1, 0, 7],
                  top_p=[1.0, 0.9, 0.8, 0.3, 1.0, 0.5, 1e-6, 0.95])


def _params(B):
    t, k, p = (jnp.asarray(ROW_PARAMS[n][:B], d) for n, d in
               (("temperature", jnp.float32), ("top_k", jnp.int32), ("top_p", jnp.float32)))
    return t, k, p


FLAGS = [dict(), dict(use_top_k=False), dict(use_top_p=False), dict(use_top_k=False, use_top_p=False),
         dict(greedy=True)]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f) or "all")
def test_tpu_kernel_equals_reference(flags):
    logits, seeds = _rows(8, 300)
    t, k, p = _params(8)
    want_tokens, want_lp = ks.sample_reference(logits, t, k, p, seeds, **flags)
    tokens, lp = ks.sample_tpu(logits, t, k, p, seeds, interpret=True, **flags)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(want_tokens))
    np.testing.assert_allclose(np.asarray(lp), np.asarray(want_lp), atol=1e-5)


def test_tpu_kernel_equals_reference_on_many_draws():
    """Same logits, 48 seeds: the kernel draws exactly the reference's samples."""
    B, V = 48, 40
    logits = jnp.tile(jnp.asarray(np.random.default_rng(1).normal(size=(1, V)) * 2, jnp.float32), (B, 1))
    seeds = jnp.asarray(np.random.default_rng(2).integers(-2**31, 2**31 - 1, (B, 2)), jnp.int32)
    t, k, p = jnp.full((B,), 0.8), jnp.full((B,), 10, jnp.int32), jnp.full((B,), 0.9)
    want, _ = ks.sample_reference(logits, t, k, p, seeds)
    got, _ = ks.sample_tpu(logits, t, k, p, seeds, interpret=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert len(set(np.asarray(got).tolist())) > 3  # actually random


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_top_k_bound_ranks_fewer_scores_for_the_same_samples(top_p):
    logits, seeds = _rows(8, 300)
    t, k, p = jnp.full((8,), 0.9), jnp.full((8,), 7, jnp.int32), jnp.full((8,), top_p)
    flags = dict(use_top_p=top_p < 1)
    full = ks.sample_reference(logits, t, k, p, seeds, **flags)
    bounded = ks.sample_reference(logits, t, k, p, seeds, top_k_bound=7, **flags)
    np.testing.assert_array_equal(np.asarray(bounded[0]), np.asarray(full[0]))
    np.testing.assert_allclose(np.asarray(bounded[1]), np.asarray(full[1]), atol=1e-6)


@pytest.mark.parametrize("tie_width", [4, 12])
def test_top_k_bound_keeps_ties_past_the_bound_and_greedy_rows(tie_width):
    """A tie at the k-th score wider than the bound (12 > 7) is still kept whole; rows
    with temperature 0 take the lowest index among tied maxima, as without a bound."""
    logits, seeds = _rows(8, 300, seed=3)
    logits = logits.at[:, 20:20 + tie_width].set(11.0)
    t = jnp.asarray([1.0, 0.0, 0.7, 1.0, 0.0, 2.0, 1.0, 0.5])
    k, p = jnp.full((8,), 7, jnp.int32), jnp.full((8,), 0.9)
    for use_top_p in (False, True):
        full = ks.sample_reference(logits, t, k, p, seeds, use_top_p=use_top_p)
        bounded = jax.jit(functools.partial(ks.sample_reference, top_k_bound=7, use_top_p=use_top_p))(
            logits, t, k, p, seeds)
        np.testing.assert_array_equal(np.asarray(bounded[0]), np.asarray(full[0]))
        np.testing.assert_allclose(np.asarray(bounded[1]), np.asarray(full[1]), atol=1e-6)
        assert np.asarray(bounded[0])[1] == 20  # greedy row: first of the tied maxima
    if tie_width > 7:  # every row's kept set is the 12 tied tokens: draws spread past the first 7
        draws = [int(ks.sample_reference(logits[:1], t[:1], k[:1], p[:1] * 0 + 1, jnp.asarray([[s, 1]], jnp.int32),
                                         top_k_bound=7)[0][0]) for s in range(60)]
        assert set(draws) <= set(range(20, 32)) and max(draws) >= 27


def _truncated_distribution(logits, temperature, top_k, top_p):
    s = logits / temperature
    order = np.argsort(-s, kind="stable")
    keep = np.zeros_like(s, bool)
    keep[order[:top_k]] = True
    probs = np.where(keep, np.exp(s - s.max()), 0.0)
    probs /= probs.sum()
    cumulative = np.cumsum(probs[order])
    nucleus = order[:int(np.searchsorted(cumulative, top_p)) + 1]
    final = np.zeros_like(probs)
    final[nucleus] = probs[nucleus]
    return final / final.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.9, 6, 0.8), (1.0, 0, 1.0), (1.5, 0, 0.6), (0.7, 3, 1.0)])
def test_empirical_distribution_matches_truncated_softmax(temperature, top_k, top_p):
    V, draws = 12, 20000
    logits = np.random.default_rng(3).normal(size=V).astype(np.float32) * 1.5
    expected = _truncated_distribution(logits.astype(np.float64), temperature, top_k or V, top_p)
    seeds = jnp.asarray(np.random.default_rng(4).integers(-2**31, 2**31 - 1, (draws, 2)), jnp.int32)
    sample = jax.jit(functools.partial(ks.sample_reference, use_top_k=top_k > 0, use_top_p=top_p < 1))
    tokens, _ = sample(jnp.tile(jnp.asarray(logits)[None], (draws, 1)), jnp.full((draws,), temperature),
                       jnp.full((draws,), top_k, jnp.int32), jnp.full((draws,), top_p), seeds)
    counts = np.bincount(np.asarray(tokens), minlength=V)
    support = expected > 0
    assert counts[~support].sum() == 0, "sampled a token outside the top-k / top-p set"
    chi2 = (((counts - draws * expected) ** 2)[support] / (draws * expected[support])).sum()
    dof = max(int(support.sum()) - 1, 1)
    assert chi2 < stats.chi2.ppf(1 - 1e-4, dof), (chi2, counts, expected * draws)


def test_logprob_is_full_vocab_log_softmax_at_temperature():
    logits, seeds = _rows(8, 300)
    t, k, p = _params(8)
    tokens, lp = ks.sample_reference(logits, t, k, p, seeds)
    scaled = np.asarray(logits, np.float64) / np.where(np.asarray(t) > 0, np.asarray(t), 1.0)[:, None]
    want = jax.nn.log_softmax(scaled, axis=-1)[np.arange(8), np.asarray(tokens)]
    np.testing.assert_allclose(np.asarray(lp), want, atol=1e-5)
    # Greedy row (T=0) takes the argmax; a k=1 row too.
    assert int(tokens[1]) == int(np.argmax(logits[1])) and int(tokens[5]) == int(np.argmax(logits[5]))


def test_kernel_lowers_for_tpu():
    logits, seeds = _rows(4, 256)
    t, k, p = _params(4)
    lowered = jax.jit(ks.sample_tpu).trace(logits, t, k, p, seeds).lower(lowering_platforms=("tpu",))
    assert "tpu_custom_call" in lowered.as_text()


def test_dispatch_and_shape_errors():
    logits, seeds = _rows(8, 300)  # the shapes of test_tpu_kernel_equals_reference: compiled already
    t, k, p = _params(8)
    assert ks.resolve_impl("auto") == "reference"
    forced = ks.sample(logits, t, k, p, seeds, impl="pallas")
    np.testing.assert_array_equal(np.asarray(forced[0]), np.asarray(ks.sample_reference(logits, t, k, p, seeds)[0]))
    with pytest.raises(ValueError, match="impl="):
        ks.sample(logits, t, k, p, seeds, impl="gpu")
    with pytest.raises(ValueError, match="seeds"):
        ks.sample(logits, t, k, p, seeds[:, :1])


def test_first_argmax_is_jnp_argmax():
    """Ties (first wins), a NaN (counts as the maximum, as in jnp.argmax), all -inf, one column."""
    logits, _ = _rows(6, 300)
    logits = logits.at[1, 7].set(jnp.nan).at[1, 200].set(jnp.nan).at[2].set(-jnp.inf)
    logits = logits.at[3, 299].set(100.0).at[4, 0].set(100.0)  # maximum at either end
    for x in (logits, logits[:, :1], -logits):
        np.testing.assert_array_equal(np.asarray(jax.jit(ks.first_argmax)(x)), np.asarray(jnp.argmax(x, axis=-1)))
    assert [int(i) for i in ks.first_argmax(logits)[:3]] == [0, 7, 0]


def test_greedy_logprob_is_log_softmax_at_the_argmax():
    logits, seeds = _rows(4, 300)
    B = logits.shape[0]
    tokens, logprobs = ks.sample_reference(logits, jnp.zeros(B), jnp.zeros(B, jnp.int32), jnp.ones(B), seeds,
                                           greedy=True)
    x = np.asarray(logits, np.float64)
    want = x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
    np.testing.assert_array_equal(np.asarray(tokens), np.argmax(x, -1))
    np.testing.assert_allclose(np.asarray(logprobs), want[np.arange(B), np.asarray(tokens)], atol=1e-6)
