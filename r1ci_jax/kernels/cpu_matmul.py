"""Decode-sized fp32 matmul for XLA:CPU: x [B, K] @ W.T with W [O, K] packed in 16-row panels.

    w_packed = pack(w)                        # f32[ceil(O / 16), K, 16], once per weight
    y = packed_matmul(x, w_packed, O)         # f32[B, O] == x @ w.T

A batch-8 decode step on CPU is bound by its matmuls, and XLA:CPU's dot reaches
about half of what the FMA units allow at that batch (bench/RESULTS.md). The C++
kernel in cpu_matmul.cc streams the packed panels once and keeps the B x 32 outputs
of a panel pair in registers; it is an XLA FFI custom call (jax.ffi), so it runs
inside jitted code and `lax.while_loop`s like any op, on XLA's intra-op threads.

The library is compiled on first use, on the machine that runs it (`c++ -O3
-march=native`, ~2 s), into a cache directory ($R1CI_CACHE_DIR, else
~/.cache/r1ci_jax) keyed by the source, the jaxlib version and the CPU's
instruction-set flags; a compiled library is reused by later processes. When
there is no compiler or the build fails, or R1CI_CPU_MATMUL=0, `available()` is
False and `packed_matmul` computes the same product with XLA's dot
(`packed_matmul_reference`, also the truth the kernel is tested against). fp32
only; the sampler uses it for CPU decode of fp32 models.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

PANEL = 16
TARGET = "r1ci_packed_matmul_f32"
SOURCE = pathlib.Path(__file__).with_name("cpu_matmul.cc")
_log = logging.getLogger(__name__)


def _cpu_fingerprint() -> str:
    """The CPU's instruction-set flags: a -march=native build must not run on another CPU."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path() -> pathlib.Path:
    """Where this machine's build of cpu_matmul.cc lives (it may not exist yet)."""
    import jaxlib
    key = hashlib.sha256(SOURCE.read_bytes() + jaxlib.__version__.encode() + platform.machine().encode()
                         + _cpu_fingerprint().encode()).hexdigest()[:16]
    root = pathlib.Path(os.environ.get("R1CI_CACHE_DIR") or pathlib.Path.home() / ".cache" / "r1ci_jax")
    return root / f"cpu_matmul-{key}.so"


def build(path: pathlib.Path) -> None:
    """Compile cpu_matmul.cc into path (atomically: concurrent builders each write a temp file)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (c++, g++, clang++ or $CXX)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = pathlib.Path(tmp) / path.name
        command = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread",
                   "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        os.replace(out, path)


@functools.cache
def available() -> bool:
    """True when the kernel library is built (now, if needed) and registered with XLA:CPU."""
    if os.environ.get("R1CI_CPU_MATMUL", "1") == "0":
        return False
    path = library_path()
    try:
        if not path.exists():
            build(path)
        library = ctypes.CDLL(str(path))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.R1ciPackedMatmulF32), platform="cpu")
    except (OSError, RuntimeError) as error:
        _log.warning("cpu_matmul: kernel unavailable, XLA's dot is used instead (%s)", error)
        return False
    return True


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

    impl: "auto" (the kernel when `available()` and the backend is CPU, else the
    reference), "kernel" (raises when the library is absent), "reference".
    """
    panels, K, panel = w_packed.shape
    if x.ndim != 2 or x.shape[1] != K or panel != PANEL or -(-out_features // PANEL) != panels:
        raise ValueError(f"packed_matmul: x {x.shape} and w_packed {w_packed.shape} do not fit "
                         f"W [{out_features}, {x.shape[-1]}] packed by `pack`")
    if impl not in ("auto", "kernel", "reference"):
        raise ValueError(f"packed_matmul: impl={impl!r}; expected 'auto', 'kernel' or 'reference'")
    use_kernel = impl == "kernel" or (impl == "auto" and jax.default_backend() == "cpu" and available())
    if not use_kernel:
        return packed_matmul_reference(x, w_packed, out_features)
    if not available():
        raise RuntimeError("packed_matmul(impl='kernel'): the kernel library could not be built or loaded "
                           "(see the warning logged by cpu_matmul.available(), or R1CI_CPU_MATMUL=0 is set)")
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x.shape[0], out_features), jnp.float32))
    return call(x.astype(jnp.float32), w_packed.astype(jnp.float32))
