"""Fused temperature / top-k / top-p sampling that also returns the sampled token's logprob.

    sample(logits f32[B, V], temperature f32[B], top_k int32[B], top_p f32[B],
           seeds int32[B, 2]) -> (tokens int32[B], logprobs f32[B])

Per row b, with s = logits / temperature (temperature 0: s = logits, greedy):
- keep the top_k[b] largest s (0 or >= V: all), then, within those, the smallest
  set of largest s whose softmax mass reaches top_p[b] (1: all). Ties at a
  threshold are all kept.
- sample from softmax(s) restricted to the kept set by Gumbel-max: argmax over
  kept tokens of s + g, with g = Gumbel noise from a counter-based hash of
  (seeds[b], token index), so the kernel and the reference draw the same noise
  and a row's draw depends only on its seeds. Greedy rows add no noise (first
  argmax).
- logprob = log_softmax(s)[token] over the FULL vocabulary (not the truncated
  set): the GRPO loss recomputes log-probs with the same temperature on the full
  vocab, and these must match it. Greedy rows report log_softmax(logits).

`sample_reference` is plain JAX (sort + cumsum). `sample_tpu` is a Pallas Mosaic-TPU
kernel, one grid step per row with the whole row in VMEM (a 152k vocab is 600 KB
f32): no sort; the top-k and top-p thresholds are found exactly by 32-step
bisections over the order-preserving int32 image of the float scores (count /
mass of scores >= mid). The two agree exactly except when a top-p cumulative mass
lands within float rounding of the target (different summation order).
On GPU, `sample` uses the reference (XLA's sort), even when kernels are forced: there
is no Mosaic GPU sampling kernel yet.

Static flags `use_top_k` / `use_top_p` / `greedy` compile the unused work out.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

IMPLS = ("auto", "reference", "pallas", "tpu")


def _i32(value: int) -> int:
    """A uint32 constant as the int32 with the same bits (Mosaic has no unsigned math)."""
    return int(np.uint32(value).view(np.int32))


_MIX1, _MIX2, _GOLDEN = _i32(0x85EBCA6B), _i32(0xC2B2AE35), _i32(0x9E3779B9)
_FLOAT_TO_ORDERED = 0x7FFFFFFF


def _fmix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser on int32 bits (wrapping multiply, logical shifts)."""
    h = h ^ lax.shift_right_logical(h, 16)
    h = h * _MIX1
    h = h ^ lax.shift_right_logical(h, 13)
    h = h * _MIX2
    return h ^ lax.shift_right_logical(h, 16)


def gumbel_noise(seed0: jax.Array, seed1: jax.Array, index: jax.Array) -> jax.Array:
    """Standard Gumbel noise, a pure function of (seed0, seed1, index) (all int32)."""
    h = _fmix32(_fmix32(index * _GOLDEN + seed0) ^ seed1)
    u = (lax.shift_right_logical(h, 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))  # (0, 1)
    return -jnp.log(-jnp.log(u))


def _scaled(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """logits / T (T <= 0: unscaled), with -0.0 made +0.0 so value and bit order agree."""
    t = temperature.astype(jnp.float32)
    inv_t = jnp.where(t > 0, 1.0 / jnp.where(t > 0, t, 1.0), 1.0)
    s = logits.astype(jnp.float32) * inv_t
    return jnp.where(s == 0, 0.0, s)


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, axis=-1)` (first maximum; a NaN counts as the maximum) as two
    plain reductions: XLA:CPU runs argmax as a variadic (value, index) reduce that
    costs ~3x a max plus a masked min over [8, 32k] logits (bench/RESULTS.md)."""
    m = jnp.max(x, axis=-1, keepdims=True)  # NaN if the row has one
    index = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where((x == m) | jnp.isnan(x), index, x.shape[-1]), axis=-1)


def _ordered_key(s: jax.Array) -> jax.Array:
    """int32 image of float32 s that preserves order (for exact bisection)."""
    bits = lax.bitcast_convert_type(s, jnp.int32)
    return jnp.where(bits < 0, bits ^ _FLOAT_TO_ORDERED, bits)


# ----------------------------------------------------------------------------- reference

def sample_reference(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                     seeds: jax.Array, *, use_top_k: bool = True, use_top_p: bool = True,
                     greedy: bool = False, top_k_bound: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Plain-JAX sampler (semantics in the module docstring).

    top_k_bound: a static bound with 1 <= top_k[b] <= top_k_bound for every row, if
    known: then only the top_k_bound largest scores are ranked (`lax.top_k`) and the
    noise is drawn for those candidates only, instead of sorting and noising the
    whole vocabulary. Same draws: a token's noise depends only on its index.
    """
    B, V = logits.shape
    temperature = temperature.astype(jnp.float32)
    s = _scaled(logits, temperature[:, None])
    if use_top_k and not greedy and top_k_bound is not None and top_k_bound < V:
        return _sample_top_k_candidates(s, temperature, top_k, top_p, seeds, top_k_bound, use_top_p=use_top_p)
    return _sample_scaled(s, temperature, top_k, top_p, seeds, use_top_k=use_top_k, use_top_p=use_top_p,
                          greedy=greedy, top_k_bound=top_k_bound)


def _effective_k(top_k: jax.Array, V: int) -> jax.Array:
    """top_k per row with 0 or >= V meaning the whole vocabulary."""
    return jnp.where((top_k <= 0) | (top_k >= V), V, top_k).astype(jnp.int32)


def _nucleus_min(ranked: jax.Array, in_top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """The smallest score of the top-p nucleus: ranked f32[B, R] descending, in_top_k
    bool[B, R] (the scores top-p chooses among) -> f32[B, 1]."""
    mass = jnp.where(in_top_k, jnp.exp(ranked - ranked[:, :1]), 0.0)
    cumulative = jnp.cumsum(mass, axis=-1)
    target = top_p.astype(jnp.float32)[:, None] * cumulative[:, -1:]
    first = jnp.argmax(cumulative >= target, axis=-1)  # first index reaching the mass
    return jnp.take_along_axis(ranked, first[:, None], 1)


def _noisy_argmax(scores: jax.Array, keep: jax.Array, token_ids: jax.Array, temperature: jax.Array,
                  seeds: jax.Array) -> jax.Array:
    """Gumbel-max over the kept scores (no noise where temperature is 0): the position of
    the winner in `scores` (f32[B, N]; token_ids int32[B, N] or [1, N] name their tokens)."""
    seeds = seeds.astype(jnp.int32)
    noise = gumbel_noise(seeds[:, :1], seeds[:, 1:], token_ids)
    noise = jnp.where(temperature[:, None] > 0, noise, 0.0)
    return first_argmax(jnp.where(keep, scores + noise, -jnp.inf))


def _sample_scaled(s: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, seeds: jax.Array,
                   *, use_top_k: bool, use_top_p: bool, greedy: bool,
                   top_k_bound: int | None) -> tuple[jax.Array, jax.Array]:
    """The whole-vocabulary reference on scores already scaled by the temperature."""
    B, V = s.shape
    if greedy:  # the maximum's logprob, without materialising log_softmax over the vocabulary
        tokens = first_argmax(s)
        m = jnp.max(s, axis=-1, keepdims=True)
        return tokens, -jnp.log(jnp.sum(jnp.exp(s - m), axis=-1))
    logprobs_all = jax.nn.log_softmax(s, axis=-1)
    keep = jnp.ones((B, V), bool)
    if use_top_k or use_top_p:
        if use_top_k and top_k_bound is not None and top_k_bound < V:
            ranked = lax.top_k(s, top_k_bound)[0]  # descending; every row's k-th is in here
        else:
            ranked = -jnp.sort(-s, axis=-1)  # descending
        kth = jnp.take_along_axis(ranked, (_effective_k(top_k, V) - 1)[:, None], 1)  # [B, 1]
        if use_top_k:
            keep = s >= kth
        if use_top_p:
            in_top_k = ranked >= kth if use_top_k else jnp.ones_like(ranked, bool)
            keep = keep & ((s >= _nucleus_min(ranked, in_top_k, top_p)) | (top_p[:, None] >= 1.0))
    index = jnp.arange(V, dtype=jnp.int32)[None, :]
    tokens = _noisy_argmax(s, keep, index, temperature, seeds).astype(jnp.int32)
    return tokens, jnp.take_along_axis(logprobs_all, tokens[:, None], 1)[:, 0]


def _sample_top_k_candidates(s: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                             seeds: jax.Array, bound: int, *, use_top_p: bool) -> tuple[jax.Array, jax.Array]:
    """`sample_reference` on the `bound` largest scores per row (s: f32[B, V], scaled).

    The kept set lies inside the candidates unless a tie at a row's k-th score runs
    past them (count(s >= kth) > bound); then the whole-vocabulary path decides, so
    ties are still all kept.
    """
    B, V = s.shape
    values, indices = lax.top_k(s, bound)  # descending; equal scores in index order
    k_eff = jnp.clip(_effective_k(top_k, V), 1, bound)
    kth = jnp.take_along_axis(values, (k_eff - 1)[:, None], 1)  # [B, 1]
    log_z = jax.nn.logsumexp(s, axis=-1)

    def from_candidates(_):
        keep = values >= kth
        if use_top_p:
            keep = keep & ((values >= _nucleus_min(values, keep, top_p)) | (top_p[:, None] >= 1.0))
        pick = _noisy_argmax(values, keep, indices, temperature, seeds)[:, None]
        token = jnp.take_along_axis(indices, pick, 1)[:, 0].astype(jnp.int32)
        return token, jnp.take_along_axis(values, pick, 1)[:, 0] - log_z

    def from_vocabulary(_):
        return _sample_scaled(s, temperature, top_k, top_p, seeds, use_top_k=True, use_top_p=use_top_p,
                              greedy=False, top_k_bound=bound)

    tie_overflow = jnp.any(jnp.sum(s >= kth, axis=-1) > bound)
    return lax.cond(tie_overflow, from_vocabulary, from_candidates, None)


# ----------------------------------------------------------------------------- TPU (Mosaic)

def _bisect_threshold(keys: jax.Array, lo: jax.Array, hi: jax.Array, reaches) -> jax.Array:
    """Largest key threshold t in [lo, hi] with reaches(t) true (reaches(lo) must hold).

    keys: int32[1, V]; lo, hi: int32[1, 1]. 32 halvings cover the whole int32 range.
    """
    def step(_, bounds):
        lo, hi = bounds
        span = hi - lo  # may wrap; its bits are the unsigned width
        mid = lo + lax.shift_right_logical(span, 1) + (span & 1)  # ceil midpoint, no overflow
        ok = reaches(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)
    lo, _ = lax.fori_loop(0, 32, step, (lo, hi))
    return lo


def _tpu_kernel(temp_ref, top_k_ref, top_p_ref, seeds_ref, logits_ref, token_ref, logprob_ref, *,
                use_top_k: bool, use_top_p: bool, greedy: bool):
    """One row. logits_ref: [1, V]; token_ref: int32[1, 1]; logprob_ref: f32[1, 1]."""
    b = pl.program_id(0)
    V = logits_ref.shape[-1]
    temperature = jnp.full((1, 1), temp_ref[b], jnp.float32)
    s = _scaled(logits_ref[...], temperature)                      # [1, V]
    s_max = jnp.max(s, axis=1, keepdims=True)
    exp_s = jnp.exp(s - s_max)
    log_z = s_max + jnp.log(jnp.sum(exp_s, axis=1, keepdims=True))
    # Reductions run in f32: counts and indices below 2**24 are exact.
    index = lax.broadcasted_iota(jnp.int32, s.shape, 1)
    index_f = index.astype(jnp.float32)
    if greedy:
        score = s
    else:
        keys = _ordered_key(s)
        threshold = jnp.min(keys, axis=1, keepdims=True)
        key_max = jnp.max(keys, axis=1, keepdims=True)
        if use_top_k:
            k = jnp.full((1, 1), top_k_ref[b], jnp.int32)
            k_eff = jnp.where((k <= 0) | (k >= V), V, k).astype(jnp.float32)
            count_reaches = lambda t: jnp.sum(jnp.where(keys >= t, 1.0, 0.0), axis=1, keepdims=True) >= k_eff
            threshold = _bisect_threshold(keys, threshold, key_max, count_reaches)
        if use_top_p:
            p = jnp.full((1, 1), top_p_ref[b], jnp.float32)
            target = p * jnp.sum(jnp.where(keys >= threshold, exp_s, 0.0), axis=1, keepdims=True)
            mass_reaches = lambda t: jnp.sum(jnp.where(keys >= t, exp_s, 0.0), axis=1, keepdims=True) >= target
            nucleus = _bisect_threshold(keys, threshold, key_max, mass_reaches)
            threshold = jnp.where(p < 1.0, nucleus, threshold)
        noise = gumbel_noise(seeds_ref[2 * b], seeds_ref[2 * b + 1], index)
        noise = jnp.where(temperature > 0, noise, 0.0)
        score = jnp.where(keys >= threshold, s + noise, -jnp.inf)
    best = jnp.max(score, axis=1, keepdims=True)
    token_f = jnp.min(jnp.where(score == best, index_f, float(V)), axis=1, keepdims=True)
    token_ref[...] = token_f.astype(jnp.int32)
    logprob_ref[...] = jnp.sum(jnp.where(index_f == token_f, s, 0.0), axis=1, keepdims=True) - log_z


def sample_tpu(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
               seeds: jax.Array, *, use_top_k: bool = True, use_top_p: bool = True, greedy: bool = False,
               interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Pallas Mosaic-TPU sampler: grid (B,), one whole row of logits per step."""
    from jax.experimental.pallas import tpu as pltpu

    B, V = logits.shape
    kernel = functools.partial(_tpu_kernel, use_top_k=use_top_k, use_top_p=use_top_p, greedy=greedy)
    row = lambda b, *prefetched: (b, 0, 0)
    tokens, logprobs = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4,
            grid=(B,),
            # [B, 1, V] so a block's last two dims are the array's (1, V): Mosaic's tiling rule.
            in_specs=[pl.BlockSpec((None, 1, V), row)],
            out_specs=[pl.BlockSpec((None, 1, 1), row), pl.BlockSpec((None, 1, 1), row)],
        ),
        out_shape=[jax.ShapeDtypeStruct((B, 1, 1), jnp.int32), jax.ShapeDtypeStruct((B, 1, 1), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
        name="fused_sampling",
    )(temperature.astype(jnp.float32), top_k.astype(jnp.int32), top_p.astype(jnp.float32),
      seeds.astype(jnp.int32).reshape(2 * B), logits.astype(jnp.float32).reshape(B, 1, V))
    return tokens.reshape(B), logprobs.reshape(B)


# ----------------------------------------------------------------------------- dispatch

def resolve_impl(impl: str) -> str:
    """"auto" -> the kernel on TPU, else the reference. "pallas" -> the kernel (interpreted
    off TPU), except on GPU, which has no sampling kernel yet: the reference."""
    if impl not in IMPLS:
        raise ValueError(f"sampling impl={impl!r}; expected one of {IMPLS}")
    backend = jax.default_backend()
    if impl == "auto":
        return "tpu" if backend == "tpu" else "reference"
    if impl == "pallas":
        return "reference" if backend == "gpu" else "tpu"
    return impl


def sample(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, seeds: jax.Array,
           *, use_top_k: bool = True, use_top_p: bool = True, greedy: bool = False, impl: str = "auto",
           interpret: bool | None = None, top_k_bound: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Dispatching sampler; interpret=None interprets a forced kernel off TPU.

    top_k_bound: see `sample_reference` (the kernel does not need it)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {logits.shape}")
    B = logits.shape[0]
    for name, arr, shape in (("temperature", temperature, (B,)), ("top_k", top_k, (B,)),
                             ("top_p", top_p, (B,)), ("seeds", seeds, (B, 2))):
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    flags = dict(use_top_k=use_top_k, use_top_p=use_top_p, greedy=greedy)
    if resolve_impl(impl) == "reference":
        return sample_reference(logits, temperature, top_k, top_p, seeds, top_k_bound=top_k_bound, **flags)
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    return sample_tpu(logits, temperature, top_k, top_p, seeds, interpret=interpret, **flags)
