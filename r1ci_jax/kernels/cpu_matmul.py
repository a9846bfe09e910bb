"""Decode-sized fp32 matmul for XLA:CPU: x [B, K] @ W.T with W [O, K] packed in 16-row panels.

    w_packed = pack(w)                        # f32[ceil(O / 16), K, 16], once per weight
    y = packed_matmul(x, w_packed, O)         # f32[B, O] == x @ w.T

A batch-8 decode step on CPU is bound by its matmuls, and XLA:CPU's dot reaches
about half of what the FMA units allow at that batch (bench/RESULTS.md). The C++
kernel in cpu_matmul.cc streams the packed panels once and keeps the B x 32 outputs
of a panel pair in registers; it is an XLA FFI custom call (jax.ffi), so it runs
inside jitted code and `lax.while_loop`s like any op, on XLA's intra-op threads.

The kernel library is compiled on first use (`cpu_ffi.py`). Without it
(`cpu_ffi.available()` False: no compiler, a failed build, or R1CI_CPU_KERNELS=0)
`packed_matmul` computes the same product with XLA's dot (`packed_matmul_reference`,
also the truth the kernel is tested against). fp32 only; the sampler uses it for
CPU decode of fp32 models.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from r1ci_jax.kernels import cpu_ffi

PANEL = 16
TARGET = "r1ci_packed_matmul_f32"


def pack(w: jax.Array) -> jax.Array:
    """w [O, K] -> f32[ceil(O / 16), K, 16]: panel p holds rows 16p..16p+15 (zero past O), k-major."""
    if w.ndim != 2:
        raise ValueError(f"pack: expected a weight [out, in], got shape {w.shape}")
    O, K = w.shape
    panels = -(-O // PANEL)
    w = jnp.pad(w.astype(jnp.float32), ((0, panels * PANEL - O), (0, 0)))
    return w.reshape(panels, PANEL, K).transpose(0, 2, 1)


def packed_matmul_reference(x: jax.Array, w_packed: jax.Array, out_features: int) -> jax.Array:
    """Plain JAX: x f32[B, K], w_packed from `pack` -> f32[B, out_features]."""
    panels, K, _ = w_packed.shape
    w = w_packed.transpose(0, 2, 1).reshape(panels * PANEL, K)[:out_features]
    return jnp.dot(x.astype(jnp.float32), w.T, precision=jax.lax.Precision.HIGHEST)


def packed_matmul(x: jax.Array, w_packed: jax.Array, out_features: int, *, impl: str = "auto") -> jax.Array:
    """x [B, K] @ W.T -> f32[B, out_features], W [out_features, K] given as w_packed = pack(W).

    impl: "auto" (the kernel when `cpu_ffi.available()` and the backend is CPU, else the
    reference), "kernel" (raises when the library is absent), "reference".
    """
    panels, K, panel = w_packed.shape
    if x.ndim != 2 or x.shape[1] != K or panel != PANEL or -(-out_features // PANEL) != panels:
        raise ValueError(f"packed_matmul: x {x.shape} and w_packed {w_packed.shape} do not fit "
                         f"W [{out_features}, {x.shape[-1]}] packed by `pack`")
    if impl not in ("auto", "kernel", "reference"):
        raise ValueError(f"packed_matmul: impl={impl!r}; expected 'auto', 'kernel' or 'reference'")
    use_kernel = impl == "kernel" or (impl == "auto" and jax.default_backend() == "cpu" and cpu_ffi.available())
    if not use_kernel:
        return packed_matmul_reference(x, w_packed, out_features)
    if not cpu_ffi.available():
        raise RuntimeError(f"packed_matmul(impl='kernel'): {cpu_ffi.UNAVAILABLE}")
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x.shape[0], out_features), jnp.float32))
    return call(x.astype(jnp.float32), w_packed.astype(jnp.float32))
