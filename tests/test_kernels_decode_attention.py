"""Ragged decode attention: Pallas kernels (interpret mode) against the plain-JAX reference.

No TPU / GPU here: the kernels run in Pallas's interpreters (the generic one and the
TPU one for the Mosaic-TPU kernel; the Mosaic GPU interpreter for the GPU kernel),
and their lowering to Mosaic TPU / Mosaic GPU is checked by lowering for those
platforms (which runs the Pallas -> Mosaic lowering rules, not the device compiler).
"""
import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from r1ci_jax.kernels import decode_attention as da

# (B, H, K, Dh, S, block_kv, dtype): GQA ratios 1, 4, 7; ragged blocks; a partial last block.
TPU_CASES = [
    (3, 8, 2, 128, 64, 16, jnp.float32),
    (2, 7, 1, 16, 40, 16, jnp.float32),     # S not a multiple of block_kv
    (4, 4, 4, 64, 96, 32, jnp.bfloat16),
]
GPU_CASES = [(3, 8, 2, 64, 128, 64), (2, 14, 2, 128, 128, 64)]


def _inputs(B, H, K, Dh, S, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(B, H, Dh)), dtype)
    k = jnp.asarray(rng.normal(size=(B, S, K, Dh)), dtype)
    v = jnp.asarray(rng.normal(size=(B, S, K, Dh)), dtype)
    # Ragged: 1, S (full), something in between and 0 (a skipped row), cycled over the batch.
    lengths = jnp.asarray([(1, S, S // 2 + 3, 0)[b % 4] for b in range(B)], jnp.int32)
    return q, k, v, lengths


def _f32(x):
    return np.asarray(x, np.float32)


def _tol(dtype):
    return 2e-2 if dtype == jnp.bfloat16 else 2e-6


def test_reference_matches_dense_softmax():
    q, k, v, lengths = _inputs(2, 4, 2, 8, 10, jnp.float32)
    out = np.asarray(da.decode_attention_reference(q, k, v, lengths))
    for b in range(2):
        n = int(lengths[b])
        for h in range(4):
            kv = h // 2
            s = np.asarray(k[b, :n, kv]) @ np.asarray(q[b, h]) / np.sqrt(8)
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(out[b, h], p @ np.asarray(v[b, :n, kv]), atol=1e-5)


def test_zero_length_rows_give_zeros():
    """(The kernels get a length-0 row in the B=4 cases of the tests below.)"""
    q, k, v, _ = _inputs(2, 4, 2, 16, 32, jnp.float32)
    out = np.asarray(da.decode_attention_reference(q, k, v, jnp.asarray([0, 5], jnp.int32)))
    assert np.all(out[0] == 0) and np.all(np.isfinite(out)) and np.any(out[1] != 0)


@pytest.mark.parametrize("case", TPU_CASES, ids=lambda c: f"B{c[0]}H{c[1]}K{c[2]}D{c[3]}S{c[4]}bk{c[5]}")
@pytest.mark.parametrize("interpret", ["generic", "tpu"])
def test_tpu_kernel_matches_reference(case, interpret):
    B, H, K, Dh, S, block_kv, dtype = case
    q, k, v, lengths = _inputs(B, H, K, Dh, S, dtype)
    ref = da.decode_attention_reference(q, k, v, lengths)
    mode = True if interpret == "generic" else pltpu.InterpretParams()
    out = da.decode_attention_tpu(q, k, v, lengths, block_kv=block_kv, interpret=mode)
    assert out.shape == (B, H, Dh) and out.dtype == dtype
    np.testing.assert_allclose(_f32(out), _f32(ref), atol=_tol(dtype), rtol=0)


def test_stacked_cache_reads_the_given_layer():
    B, H, K, Dh, S = 2, 4, 2, 16, 32
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(B, H, Dh)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, B, S, K, Dh)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(3, B, S, K, Dh)), jnp.float32)
    lengths = jnp.asarray([7, 32], jnp.int32)
    want = da.decode_attention_reference(q, k[2], v[2], lengths)
    for out in (da.decode_attention_reference(q, k, v, lengths, layer=2),
                da.decode_attention_tpu(q, k, v, lengths, layer=jnp.int32(2), block_kv=16, interpret=True)):
        np.testing.assert_allclose(_f32(out), _f32(want), atol=2e-6)
    with pytest.raises(ValueError, match="layer="):
        da.decode_attention(q, k, v, lengths)


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"B{c[0]}H{c[1]}K{c[2]}D{c[3]}")
def test_gpu_kernel_matches_reference_in_mosaic_gpu_interpreter(case):
    B, H, K, Dh, S, block_kv = case
    q, k, v, _ = _inputs(B, H, K, Dh, S, jnp.bfloat16)
    lengths = jnp.asarray([0, S, 65][:B], jnp.int32)  # skipped row, full row, one live slot in block 2
    ref = da.decode_attention_reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), lengths)
    out = da.decode_attention_gpu(q, k, v, lengths, block_kv=block_kv, interpret=True)
    np.testing.assert_allclose(_f32(out), _f32(ref), atol=2e-2, rtol=0)


# (B, H, K, Dh, S, block_kv): GQA ratios 1, 4, 7; S a multiple of block_kv or not; block > S.
BLOCKED_CASES = [(4, 8, 2, 32, 64, 16), (4, 7, 1, 16, 40, 16), (3, 4, 4, 8, 24, 64), (4, 14, 2, 64, 100, 32),
                 (4, 6, 2, 24, 20, 8)]  # Dh 24: one 16-wide vector and a scalar tail in the C++ kernel


@pytest.mark.parametrize("B,H,K,Dh,S,block_kv", BLOCKED_CASES)
def test_blocked_matches_reference(B, H, K, Dh, S, block_kv):
    q, k, v, lengths = _inputs(B, H, K, Dh, S, jnp.float32, seed=S)  # lengths 1, S, S/2+3, 0
    blocked = jax.jit(functools.partial(da.decode_attention_blocked, block_kv=block_kv))
    np.testing.assert_allclose(_f32(blocked(q, k, v, lengths)), _f32(da.decode_attention_reference(q, k, v, lengths)),
                               atol=2e-6)
    # Stacked [L, B, S, K, Dh] cache read at a traced layer index.
    stacked = lambda x: jnp.stack([x[::-1], x])
    at_layer = jax.jit(lambda layer: blocked(q, stacked(k), stacked(v), lengths, layer=layer))
    np.testing.assert_allclose(_f32(at_layer(jnp.int32(1))), _f32(da.decode_attention_reference(q, k, v, lengths)),
                               atol=2e-6)


def test_blocked_reads_only_blocks_up_to_the_longest_row():
    """NaN in every block past the longest row's last live block: the blocked path never
    reads them (the reference multiplies them by zero weights and returns NaN)."""
    B, H, K, Dh, S, block = 3, 4, 2, 8, 64, 16
    q, k, v, _ = _inputs(B, H, K, Dh, S, jnp.float32)
    lengths = jnp.asarray([5, 20, 0], jnp.int32)  # longest row ends in block 1 of 4
    poisoned = lambda x: x.at[:, 2 * block:].set(jnp.nan)
    out = da.decode_attention_blocked(q, poisoned(k), poisoned(v), lengths, block_kv=block)
    assert np.isnan(_f32(da.decode_attention_reference(q, poisoned(k), poisoned(v), lengths))).any()
    np.testing.assert_allclose(_f32(out), _f32(da.decode_attention_reference(q, k, v, lengths)), atol=2e-6)
    np.testing.assert_array_equal(_f32(out)[2], 0.0)  # the length-0 row


needs_cpu_kernels = pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                                       reason="no C++ compiler on this machine")


@needs_cpu_kernels
@pytest.mark.parametrize("B,H,K,Dh,S,block_kv", BLOCKED_CASES)
def test_cpu_kernel_matches_reference(B, H, K, Dh, S, block_kv):
    """The C++ kernel (Dh 8 and 16 exercise its scalar tail and one vector) at a traced
    layer of a stacked cache, and on a single-layer cache."""
    q, k, v, lengths = _inputs(B, H, K, Dh, S, jnp.float32, seed=S)  # lengths 1, S, S/2+3, 0
    want = _f32(da.decode_attention_reference(q, k, v, lengths))
    stacked = lambda x: jnp.stack([x[::-1], x, x[::-1]])
    at_layer = jax.jit(lambda layer: da.decode_attention_cpu(q, stacked(k), stacked(v), lengths, layer=layer))
    np.testing.assert_allclose(_f32(at_layer(jnp.int32(1))), want, atol=2e-6)
    np.testing.assert_allclose(_f32(da.decode_attention(q, k, v, lengths, impl="cpu")), want, atol=2e-6)


@needs_cpu_kernels
def test_cpu_kernel_reads_only_live_slots():
    """NaN in every slot past each row's length (and lengths past S clamp to S, as in the
    reference): the C++ kernel never reads a dead slot."""
    B, H, K, Dh, S = 4, 8, 2, 32, 40
    q, k, v, _ = _inputs(B, H, K, Dh, S, jnp.float32, seed=3)
    lengths = jnp.asarray([7, 0, 40, 23], jnp.int32)
    dead = jnp.arange(S)[None, :, None, None] >= lengths[:, None, None, None]
    poisoned = lambda x: jnp.where(dead, jnp.nan, x)
    out = _f32(da.decode_attention_cpu(q, poisoned(k), poisoned(v), lengths))
    np.testing.assert_allclose(out, _f32(da.decode_attention_reference(q, k, v, lengths)), atol=2e-6)
    np.testing.assert_array_equal(out[1], 0.0)
    past_end = da.decode_attention_cpu(q, k, v, jnp.asarray([7, 0, 99, 23], jnp.int32))
    np.testing.assert_allclose(_f32(past_end), _f32(da.decode_attention_reference(q, k, v, lengths)), atol=2e-6)
    # Every score of row 0 is -inf (q = +inf against k = -1): zeros, as in the reference, not NaN.
    q_inf, k_neg = q.at[0].set(jnp.inf), k.at[0].set(-1.0)
    want = _f32(da.decode_attention_reference(q_inf, k_neg, v, lengths))
    np.testing.assert_array_equal(want[0], 0.0)
    np.testing.assert_allclose(_f32(da.decode_attention_cpu(q_inf, k_neg, v, lengths)), want, atol=2e-6)


@needs_cpu_kernels
def test_cpu_kernel_refuses_bad_layer_and_dtype():
    q, k, v, lengths = _inputs(2, 4, 2, 16, 32, jnp.float32)
    stacked = lambda x: jnp.stack([x, x])
    with pytest.raises(Exception, match=r"layer 2 outside \[0, 2\)"):
        jax.block_until_ready(da.decode_attention_cpu(q, stacked(k), stacked(v), lengths, layer=jnp.int32(2)))
    with pytest.raises(ValueError, match="takes f32 q and caches"):
        da.decode_attention_cpu(q, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), lengths)
    # auto on a bf16 cache falls back to the blocked plain-JAX path
    bf16 = da.decode_attention(q, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), lengths)
    np.testing.assert_allclose(_f32(bf16), _f32(da.decode_attention_reference(
        q, k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), lengths)), atol=2e-2)


def test_kernels_lower_for_tpu_and_gpu():
    q, k, v, lengths = _inputs(2, 8, 2, 128, 128, jnp.bfloat16)
    stacked = lambda x: jnp.stack([x, x])
    tpu = jax.jit(functools.partial(da.decode_attention_tpu, block_kv=64))
    assert "tpu_custom_call" in tpu.trace(q, stacked(k), stacked(v), lengths, layer=1).lower(
        lowering_platforms=("tpu",)).as_text()
    gpu = jax.jit(functools.partial(da.decode_attention_gpu, block_kv=64))
    assert "mosaic_gpu" in gpu.trace(q, stacked(k), stacked(v), lengths, layer=1).lower(
        lowering_platforms=("cuda",)).as_text()


def test_dispatch_and_bad_inputs():
    q, k, v, lengths = _inputs(2, 4, 2, 16, 32, jnp.float32)
    from r1ci_jax.kernels import cpu_ffi
    assert da.resolve_impl("auto") == ("cpu" if cpu_ffi.available() else "blocked")  # CPU
    assert da.resolve_impl("pallas") == "tpu"      # interpreted on CPU
    forced = da.decode_attention(q, k, v, lengths, impl="pallas", block_kv=16)
    np.testing.assert_allclose(_f32(forced), _f32(da.decode_attention_reference(q, k, v, lengths)), atol=2e-6)
    with pytest.raises(ValueError, match="impl="):
        da.decode_attention(q, k, v, lengths, impl="triton")
    with pytest.raises(ValueError, match="multiple of K"):
        da.decode_attention(q[:, :3], k, v, lengths)
    with pytest.raises(ValueError, match="float16"):  # f32 cache: no wgmma kernel
        da.decode_attention_gpu(q, k, v, lengths, interpret=True)
