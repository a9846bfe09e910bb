"""Ragged decode attention: one new query token per row against that row's KV cache.

    decode_attention(q [B, H, Dh], k_cache [B, S, K, Dh], v_cache [B, S, K, Dh],
                     lengths int32[B]) -> [B, H, Dh]
    decode_attention(q, k_cache [L, B, S, K, Dh], v_cache, lengths, layer=i)

The second form reads layer i of a whole stacked cache in place (the decode loop
carries the stacked cache; slicing a layer out first would copy it every step).
Row b attends to cache slots [0, lengths[b]); H query heads share K kv heads
(GQA, H % K == 0). A row with length 0 (a finished row the sampler wants to skip)
gets zeros. The cache layout is the model's own ([B, S, K, Dh], slot-major), so the
kernels read it in place: each KV block of a row is one contiguous [block_kv, K*Dh]
slab, read once for all K heads.

Five implementations, one semantics:
- `decode_attention_reference`: plain JAX over the whole cache; the truth the others
  are tested against.
- `decode_attention_blocked`: plain JAX, online softmax over KV blocks in a loop that
  stops after the longest row's last live block (the CPU path). XLA:CPU copies and
  transposes the whole layer cache for the reference's batched matmuls; here only
  live blocks are sliced, so a step reads ~max(lengths) slots instead of S
  (bench/RESULTS.md: 2.5 -> 0.8 ms for 4 layers at half-full 512-slot caches).
- `decode_attention_cpu`: C++ (cpu_decode_attention.cc, an XLA FFI call built by
  cpu_ffi.py) for f32 caches on CPU: per (row, kv head), two passes over the live
  slots read in place, on XLA's intra-op threads; no copies or per-block overhead.
- `decode_attention_tpu`: Pallas / Mosaic TPU. Grid (B, S/block_kv); the row lengths
  are scalar-prefetched into SMEM so the KV index map clamps blocks past a row's
  length to its last live block (Pallas skips the DMA when the block index does
  not change) and `pl.when` skips their compute: a row costs ceil(length/block_kv)
  blocks, not S/block_kv. Online (flash) softmax in f32 VMEM scratch.
- `decode_attention_gpu`: Pallas / Mosaic GPU (`plgpu.kernel`). One CTA per (row,
  kv head); the CTA loops over the row's live KV blocks only (the loop bound is the
  row's length), copying each [block_kv, Dh] block GMEM->SMEM with TMA, double
  buffered, and keeps the online-softmax state in registers.

`decode_attention(..., impl=...)` dispatches: "auto" picks the backend's kernel on
TPU/GPU, "cpu" on CPU for f32 caches when the C++ kernels are built, and "blocked"
elsewhere; "cpu" forces the C++ kernel; "pallas" forces the backend's kernel (on CPU:
the TPU kernel under the Pallas interpreter); "tpu"/"gpu" force one kernel;
"reference" / "blocked" force plain JAX. `interpret=True` runs a kernel on CPU (tests).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

IMPLS = ("auto", "reference", "blocked", "cpu", "pallas", "tpu", "gpu")
PLAIN_JAX_IMPLS = ("reference", "blocked")  # GSPMD partitions these; the Pallas kernels need shard_map
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- reference

def decode_attention_reference(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                               lengths: jax.Array, *, layer: jax.Array | int | None = None,
                               sm_scale: float | None = None) -> jax.Array:
    """Plain-JAX ragged GQA decode attention (shapes in the module docstring)."""
    _check_shapes(q, k_cache, v_cache, lengths, layer)
    if k_cache.ndim == 5:
        k_cache = lax.dynamic_index_in_dim(k_cache, layer, 0, keepdims=False)
        v_cache = lax.dynamic_index_in_dim(v_cache, layer, 0, keepdims=False)
    B, H, Dh = q.shape
    _, S, K, _ = k_cache.shape
    scale = Dh ** -0.5 if sm_scale is None else sm_scale
    qg = q.reshape(B, K, H // K, Dh)
    # Scores as [B, S, K, G]: the cache's own axis order, so XLA reads it in place
    # rather than transposing a copy of it on every call.
    scores = jnp.einsum("bkgd,bskd->bskg", qg, k_cache, preferred_element_type=jnp.float32) * scale
    live = jnp.arange(S, dtype=jnp.int32)[None, :] < lengths.astype(jnp.int32)[:, None]  # [B, S]
    scores = jnp.where(live[:, :, None, None], scores, _NEG_INF)
    m = jnp.max(scores, axis=1, keepdims=True)
    p = jnp.exp(scores - jnp.where(jnp.isfinite(m), m, 0.0))
    denom = p.sum(axis=1)[..., None]  # [B, K, G, 1]
    out = jnp.einsum("bskg,bskd->bkgd", p.astype(v_cache.dtype), v_cache, preferred_element_type=jnp.float32)
    out = jnp.where(denom > 0, out / jnp.where(denom > 0, denom, 1.0), 0.0)
    return out.reshape(B, H, Dh).astype(q.dtype)


def decode_attention_blocked(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array, *,
                             layer: jax.Array | int | None = None, block_kv: int = 64,
                             sm_scale: float | None = None) -> jax.Array:
    """Plain-JAX ragged GQA decode attention over live KV blocks only (module docstring).

    Blocks of block_kv slots are sliced from the cache (stacked or not) in a
    `fori_loop` with ceil(max(lengths) / block_kv) trips, keeping the running max,
    normaliser and weighted sum in f32 (flash decoding). When block_kv does not divide
    S the last slice is clamped back into the cache; slots an earlier block already
    covered are masked so each counts once.
    """
    _check_shapes(q, k_cache, v_cache, lengths, layer)
    k_cache, v_cache, layer_index = _stacked(k_cache, v_cache, layer)
    _, B, S, K, Dh = k_cache.shape
    H = q.shape[1]
    G, block = H // K, min(block_kv, S)
    scale = Dh ** -0.5 if sm_scale is None else sm_scale
    qg = q.reshape(B, K, G, Dh).astype(jnp.float32) * scale
    lengths = lengths.astype(jnp.int32)
    first_slot = jnp.zeros((), jnp.int32)

    def one_block(i, carry):
        m, denom, acc = carry
        start = jnp.minimum(i * block, S - block)
        corner = (layer_index[0], first_slot, start, first_slot, first_slot)
        k = lax.dynamic_slice(k_cache, corner, (1, B, block, K, Dh))[0]
        v = lax.dynamic_slice(v_cache, corner, (1, B, block, K, Dh))[0]
        slots = start + jnp.arange(block, dtype=jnp.int32)
        live = (slots[None, :] >= i * block) & (slots[None, :] < lengths[:, None])  # [B, block]
        scores = jnp.einsum("bkgd,bskd->bkgs", qg, k, preferred_element_type=jnp.float32)
        scores = jnp.where(live[:, None, None, :], scores, _NEG_INF)
        m_new = jnp.maximum(m, scores.max(axis=-1))
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # all masked so far: keep exp finite
        p = jnp.exp(scores - shift[..., None])
        rescale = jnp.exp(m - shift)
        acc = acc * rescale[..., None] + jnp.einsum("bkgs,bskd->bkgd", p.astype(v.dtype), v,
                                                    preferred_element_type=jnp.float32)
        return m_new, denom * rescale + p.sum(axis=-1), acc

    num_blocks = (jnp.max(lengths) + block - 1) // block
    init = (jnp.full((B, K, G), _NEG_INF, jnp.float32), jnp.zeros((B, K, G), jnp.float32),
            jnp.zeros((B, K, G, Dh), jnp.float32))
    _, denom, acc = lax.fori_loop(0, num_blocks, one_block, init)
    out = jnp.where(denom[..., None] > 0, acc / jnp.where(denom > 0, denom, 1.0)[..., None], 0.0)
    return out.reshape(B, H, Dh).astype(q.dtype)


# ----------------------------------------------------------------------------- CPU (C++)

def cpu_kernel_unsupported_reason(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array) -> str | None:
    """None when the C++ kernel handles these arrays, else the reason it does not."""
    if not q.dtype == k_cache.dtype == v_cache.dtype == jnp.float32:
        return f"q {q.dtype}, k {k_cache.dtype}, v {v_cache.dtype} (it takes f32 q and caches)"
    return None


def decode_attention_cpu(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array, *,
                         layer: jax.Array | int | None = None, sm_scale: float | None = None) -> jax.Array:
    """The C++ kernel of cpu_decode_attention.cc (an XLA FFI call; f32 q and caches): per
    (row, kv head), its live slots only, read in place from the stacked cache."""
    from r1ci_jax.kernels import cpu_ffi

    _check_shapes(q, k_cache, v_cache, lengths, layer)
    if not cpu_ffi.available():
        raise RuntimeError(f"decode_attention(impl='cpu'): {cpu_ffi.UNAVAILABLE}")
    reason = cpu_kernel_unsupported_reason(q, k_cache, v_cache)
    if reason:
        raise ValueError(f"decode_attention(impl='cpu') does not support {reason}")
    k_cache, v_cache, layer = _stacked(k_cache, v_cache, layer)
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    call = jax.ffi.ffi_call("r1ci_decode_attention_f32", jax.ShapeDtypeStruct(q.shape, jnp.float32))
    return call(q, k_cache, v_cache, lengths.astype(jnp.int32), layer, scale=np.float32(scale))


# ----------------------------------------------------------------------------- TPU (Mosaic)

def _tpu_kernel(lengths_ref, layer_ref, q_ref, k_ref, v_ref, o_ref, m_scr, l_scr, acc_scr, *,
                block_kv: int, num_kv_heads: int, head_dim: int, sm_scale: float):
    """One (row b, KV block j) grid step (layer_ref only feeds the index maps).

    q_ref: [K, G, Dh] (G padded to a multiple of 8 sublanes); k_ref, v_ref: [block_kv, K*Dh];
    o_ref: [K, G, Dh]; scratch m_scr, l_scr: f32[K, G, 1] (running max / denominator),
    acc_scr: f32[K, G, Dh]. Matmul inputs stay in the cache dtype (f32 accumulation),
    as in the reference.
    """
    b, j = pl.program_id(0), pl.program_id(1)
    length = lengths_ref[b]

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, _NEG_INF, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    @pl.when(j * block_kv < length)
    def _accumulate():
        first = j * block_kv
        live_rows = first + lax.broadcasted_iota(jnp.int32, (block_kv, 1), 0) < length  # [block_kv, 1]
        live_cols = first + lax.broadcasted_iota(jnp.int32, (1, block_kv), 1) < length  # [1, block_kv]
        for h in range(num_kv_heads):  # static: K is small (2-8 for Qwen2.5)
            cols = slice(h * head_dim, (h + 1) * head_dim)
            q = q_ref[h]                                             # [G, Dh]
            k = k_ref[:, cols]                                       # [block_kv, Dh]
            # Slots past the length may hold stale values or (last partial block) padding.
            v = jnp.where(live_rows, v_ref[:, cols], jnp.zeros((), v_ref.dtype))
            s = lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32) * sm_scale  # [G, block_kv]
            s = jnp.where(live_cols, s, _NEG_INF)
            m_prev = m_scr[h]                                        # [G, 1]
            m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
            p = jnp.exp(s - m_next)
            correction = jnp.exp(m_prev - m_next)
            l_scr[h] = correction * l_scr[h] + jnp.sum(p, axis=1, keepdims=True)
            acc_scr[h] = correction * acc_scr[h] + lax.dot_general(
                p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            m_scr[h] = m_next

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        denom = l_scr[...]
        out = jnp.where(denom > 0, acc_scr[...] / jnp.where(denom > 0, denom, 1.0), 0.0)
        o_ref[...] = out.astype(o_ref.dtype)


def decode_attention_tpu(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array, *,
                         layer: jax.Array | int | None = None, block_kv: int = 256,
                         sm_scale: float | None = None, interpret: bool = False) -> jax.Array:
    """Pallas Mosaic-TPU kernel (see module docstring). block_kv is clipped to S."""
    from jax.experimental.pallas import tpu as pltpu

    _check_shapes(q, k_cache, v_cache, lengths, layer)
    k_cache, v_cache, layer = _stacked(k_cache, v_cache, layer)
    B, H, Dh = q.shape
    L, _, S, K, _ = k_cache.shape
    G = H // K
    G_pad = -(-G // 8) * 8  # whole sublane tiles for the matmuls (7 heads per kv head in Qwen2.5-7B)
    block_kv = min(block_kv, S)
    num_blocks = pl.cdiv(S, block_kv)
    scale = Dh ** -0.5 if sm_scale is None else sm_scale
    q4 = jnp.pad(q.astype(k_cache.dtype).reshape(B, K, G, Dh), ((0, 0), (0, 0), (0, G_pad - G), (0, 0)))
    # Free reshapes (contiguous): a KV block becomes one [block_kv, K*Dh] slab whose
    # last two dims satisfy Mosaic's tiling rule (K*Dh is the full minor dim).
    k4 = k_cache.reshape(L, B, S, K * Dh)
    v4 = v_cache.reshape(L, B, S, K * Dh)

    def kv_index(b, j, lengths_ref, layer_ref):
        # Past the row's last live block, repeat that block's index: no new DMA.
        # lax.div, not //: floor division's sign handling needs the chip version to lower.
        last_live = lax.div(jnp.maximum(lengths_ref[b] - 1, 0), jnp.int32(block_kv))
        return layer_ref[0], b, jnp.minimum(j, last_live), 0

    per_row = lambda b, j, lengths_ref, layer_ref: (b, 0, 0, 0)

    kernel = functools.partial(_tpu_kernel, block_kv=block_kv, num_kv_heads=K, head_dim=Dh, sm_scale=scale)
    out = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(B, num_blocks),
            in_specs=[
                pl.BlockSpec((None, K, G_pad, Dh), per_row),
                pl.BlockSpec((None, None, block_kv, K * Dh), kv_index),
                pl.BlockSpec((None, None, block_kv, K * Dh), kv_index),
            ],
            out_specs=pl.BlockSpec((None, K, G_pad, Dh), per_row),
            scratch_shapes=[pltpu.VMEM((K, G_pad, 1), jnp.float32), pltpu.VMEM((K, G_pad, 1), jnp.float32),
                            pltpu.VMEM((K, G_pad, Dh), jnp.float32)],
        ),
        out_shape=jax.ShapeDtypeStruct((B, K, G_pad, Dh), q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
        name="ragged_decode_attention",
    )(lengths.astype(jnp.int32), layer, q4, k4, v4)
    return out[:, :, :G].reshape(B, H, Dh)


# ----------------------------------------------------------------------------- GPU (Mosaic GPU)

_GPU_ROWS = 64  # wgmma's M: one kv head's G query heads, zero padded to 64 rows
_GPU_DTYPES = (jnp.bfloat16, jnp.float16)


def gpu_kernel_unsupported_reason(q: jax.Array, k_cache: jax.Array, block_kv: int = 64) -> str | None:
    """None when the Mosaic GPU kernel handles these shapes, else the reason it does not."""
    Dh = q.shape[-1]
    S, K = k_cache.shape[-3], k_cache.shape[-2]
    H = q.shape[1]
    if k_cache.dtype not in _GPU_DTYPES:
        return f"cache dtype {k_cache.dtype} (wgmma needs bfloat16/float16)"
    if Dh % 64:
        return f"head_dim={Dh} (needs a multiple of 64 for the 128-byte swizzle)"
    if block_kv % 64 or S % block_kv:
        return f"block_kv={block_kv}, S={S} (block_kv a multiple of 64 dividing S)"
    if H // K > _GPU_ROWS:
        return f"{H // K} query heads per kv head (at most {_GPU_ROWS})"
    return None


def decode_attention_gpu(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array, *,
                         layer: jax.Array | int | None = None, block_kv: int = 64,
                         sm_scale: float | None = None, interpret: bool = False) -> jax.Array:
    """Pallas Mosaic-GPU kernel (Hopper wgmma + TMA; see the module docstring).

    Each CTA (one warpgroup) owns (row b, kv head h): its G query heads are the
    first G rows of a zero-padded [64, Dh] tile, so QK^T and PV are two wgmmas per KV
    block. Decode attention is bandwidth bound, so the padding costs tensor-core
    time only. The loop runs ceil(lengths[b] / block_kv) times, prefetching block
    i+1 (TMA, the other SMEM slot) while block i is computed.
    interpret=True runs it in the Mosaic GPU interpreter, which lacks transposed
    SMEM views: there QK^T is a dot of the same SMEM tiles instead of a wgmma.
    """
    from jax.experimental.pallas import mosaic_gpu as plgpu

    _check_shapes(q, k_cache, v_cache, lengths, layer)
    if (reason := gpu_kernel_unsupported_reason(q, k_cache, block_kv)) is not None:
        raise ValueError(f"Mosaic GPU decode attention does not support {reason}")
    k_cache, v_cache, layer = _stacked(k_cache, v_cache, layer)
    B, H, Dh = q.shape
    _, _, S, K, _ = k_cache.shape
    G = H // K
    dtype = k_cache.dtype
    scale = Dh ** -0.5 if sm_scale is None else sm_scale
    q_tiles = jnp.zeros((B, K, _GPU_ROWS, Dh), dtype).at[:, :, :G].set(q.astype(dtype).reshape(B, K, G, Dh))
    # The interpreter ignores register layouts and has no layout_cast rule.
    with_layout = (lambda x, layout: x) if interpret else plgpu.layout_cast

    def kernel(lengths_ref, layer_ref, q_ref, k_ref, v_ref, o_ref, q_smem, k_smem, v_smem, p_smem,
               q_bar, k_bar, v_bar):
        b, h = lax.axis_index("batch"), lax.axis_index("heads")
        length, layer = lengths_ref[b], layer_ref[0]
        steps = lax.div(length + (block_kv - 1), jnp.int32(block_kv))

        def fetch(step, slot):
            rows = (layer, b, pl.ds(step * block_kv, block_kv), h)
            plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_bar.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_bar.at[slot])

        plgpu.copy_gmem_to_smem(q_ref.at[b, h], q_smem, q_bar)

        @pl.when(steps > 0)
        def _first_fetch():
            fetch(0, 0)

        plgpu.barrier_wait(q_bar)
        row_layout = plgpu.Layout.WGMMA.reduce(1)
        m_i = with_layout(jnp.full((_GPU_ROWS,), _NEG_INF, jnp.float32), row_layout)
        l_i = with_layout(jnp.zeros((_GPU_ROWS,), jnp.float32), row_layout)
        acc = with_layout(jnp.zeros((_GPU_ROWS, Dh), jnp.float32), plgpu.Layout.WGMMA)

        def block(step, carry):
            acc, m_i, l_i = carry
            slot = lax.rem(step, 2)

            @pl.when(step + 1 < steps)
            def _prefetch():  # the other slot was fully consumed by the previous step
                fetch(step + 1, 1 - slot)

            plgpu.barrier_wait(k_bar.at[slot])
            if interpret:
                qk = lax.dot_general(q_smem[...], k_smem[slot], (((1,), (1,)), ((), ())),
                                     preferred_element_type=jnp.float32)
            else:
                def qk_wgmma(acc_ref):
                    plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                    return acc_ref[...]
                qk = pl.run_scoped(qk_wgmma, plgpu.ACC((_GPU_ROWS, block_kv), jnp.float32))
            slot_ids = with_layout(lax.broadcasted_iota(jnp.int32, (_GPU_ROWS, block_kv), 1), plgpu.Layout.WGMMA)
            qk = jnp.where(slot_ids + step * block_kv < length, qk * scale, _NEG_INF)
            m_next = jnp.maximum(m_i, qk.max(axis=1))
            correction = jnp.exp(m_i - m_next)
            p = jnp.exp(qk - lax.broadcast_in_dim(m_next, qk.shape, [0]))
            l_i = l_i * correction + p.sum(axis=1)
            acc = acc * lax.broadcast_in_dim(correction, acc.shape, [0])
            p_smem[...] = p.astype(dtype)
            plgpu.commit_smem()  # make the register->SMEM store visible to the wgmma
            plgpu.barrier_wait(v_bar.at[slot])

            def pv_wgmma(acc_ref):
                plgpu.wgmma(acc_ref, p_smem, v_smem.at[slot])
                return acc_ref[...]
            acc = acc + pl.run_scoped(pv_wgmma, plgpu.ACC((_GPU_ROWS, Dh), jnp.float32))
            return acc, m_next, l_i

        acc, m_i, l_i = lax.fori_loop(0, steps, block, (acc, m_i, l_i))
        denom = jnp.where(l_i > 0, l_i, 1.0)  # length 0: acc is 0, so is the output
        q_smem[...] = (acc / lax.broadcast_in_dim(denom, acc.shape, [0])).astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_smem, o_ref.at[b, h])
        plgpu.wait_smem_to_gmem(0)

    def entry(lengths_ref, layer_ref, q_ref, k_ref, v_ref, o_ref):
        swizzled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
        pl.run_scoped(
            lambda *scratch: kernel(lengths_ref, layer_ref, q_ref, k_ref, v_ref, o_ref, *scratch),
            plgpu.SMEM((_GPU_ROWS, Dh), dtype, transforms=swizzled),           # q, then the output
            plgpu.SMEM((2, block_kv, Dh), dtype, transforms=swizzled),         # k, double buffered
            plgpu.SMEM((2, block_kv, Dh), dtype, transforms=swizzled),         # v, double buffered
            plgpu.SMEM((_GPU_ROWS, block_kv), dtype, transforms=swizzled),     # softmax numerators
            plgpu.Barrier(num_barriers=1), plgpu.Barrier(num_barriers=2), plgpu.Barrier(num_barriers=2),
        )

    out = plgpu.kernel(
        entry, out_type=jax.ShapeDtypeStruct((B, K, _GPU_ROWS, Dh), dtype),
        grid=(K, B), grid_names=("heads", "batch"),
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=_gpu_interpret_params() if interpret else None,
    )(lengths.astype(jnp.int32), layer, q_tiles, k_cache, v_cache)
    return out[:, :, :G].reshape(B, H, Dh).astype(q.dtype)


def _gpu_interpret_params():
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # no public alias yet
    return InterpretGPUParams()


# ----------------------------------------------------------------------------- dispatch

def _stacked(k_cache: jax.Array, v_cache: jax.Array,
             layer: jax.Array | int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Kernels always see [L, B, S, K, Dh] caches and an int32[1] layer index."""
    if k_cache.ndim == 4:
        return k_cache[None], v_cache[None], jnp.zeros((1,), jnp.int32)
    return k_cache, v_cache, jnp.asarray(layer, jnp.int32).reshape(1)


def _check_shapes(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array,
                  layer: jax.Array | int | None = None) -> None:
    if q.ndim != 3 or k_cache.ndim not in (4, 5) or k_cache.shape != v_cache.shape:
        raise ValueError(f"expected q [B, H, Dh] and k/v caches [B, S, K, Dh] or [L, B, S, K, Dh]; "
                         f"got q{q.shape}, k{k_cache.shape}, v{v_cache.shape}")
    if (k_cache.ndim == 5) != (layer is not None):
        raise ValueError("pass layer= exactly when the caches are stacked [L, B, S, K, Dh]")
    B, H, Dh = q.shape
    kv = k_cache.shape[-4:]
    if kv[0] != B or kv[3] != Dh or H % kv[2]:
        raise ValueError(f"q{q.shape} does not fit cache {k_cache.shape}: need the same B and Dh "
                         f"and H a multiple of K")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be int32[{B}], got shape {lengths.shape}")


def resolve_impl(impl: str) -> str:
    """"auto"/"pallas" -> the concrete implementation for the default backend."""
    if impl not in IMPLS:
        raise ValueError(f"decode attention impl={impl!r}; expected one of {IMPLS}")
    backend = jax.default_backend()
    if impl == "auto":
        if backend in ("tpu", "gpu"):
            return backend
        from r1ci_jax.kernels import cpu_ffi
        return "cpu" if backend == "cpu" and cpu_ffi.available() else "blocked"
    if impl == "pallas":
        return "gpu" if backend == "gpu" else "tpu"
    return impl


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, lengths: jax.Array, *,
                     layer: jax.Array | int | None = None, impl: str = "auto", interpret: bool | None = None,
                     block_kv: int | None = None, sm_scale: float | None = None) -> jax.Array:
    """Ragged GQA decode attention; see the module docstring for shapes and `impl`.

    interpret=None runs a forced kernel in the Pallas interpreter when the default
    backend cannot execute it (e.g. impl="pallas" on CPU).
    """
    _check_shapes(q, k_cache, v_cache, lengths, layer)
    chosen = resolve_impl(impl)
    if chosen == "gpu" and impl == "auto" and gpu_kernel_unsupported_reason(q, k_cache, block_kv or 64):
        chosen = "reference"  # e.g. an f32 cache: auto falls back, a forced "gpu" raises
    if chosen == "cpu" and impl == "auto" and cpu_kernel_unsupported_reason(q, k_cache, v_cache):
        chosen = "blocked"  # e.g. a bf16 cache: auto falls back, a forced "cpu" raises
    if chosen == "cpu":
        return decode_attention_cpu(q, k_cache, v_cache, lengths, layer=layer, sm_scale=sm_scale)
    if chosen == "reference":
        return decode_attention_reference(q, k_cache, v_cache, lengths, layer=layer, sm_scale=sm_scale)
    if chosen == "blocked":
        return decode_attention_blocked(q, k_cache, v_cache, lengths, layer=layer, block_kv=block_kv or 64,
                                        sm_scale=sm_scale)
    if interpret is None:
        interpret = jax.default_backend() != chosen
    if chosen == "tpu":
        return decode_attention_tpu(q, k_cache, v_cache, lengths, layer=layer, block_kv=block_kv or 256,
                                    sm_scale=sm_scale, interpret=interpret)
    return decode_attention_gpu(q, k_cache, v_cache, lengths, layer=layer, block_kv=block_kv or 64,
                                sm_scale=sm_scale, interpret=interpret)
