"""Builds and registers the C++ CPU kernels (XLA FFI custom calls) of this directory.

    cpu_matmul.cc            -> "r1ci_packed_matmul_f32"     (kernels/cpu_matmul.py)
    cpu_decode_attention.cc  -> "r1ci_decode_attention_f32"  (kernels/decode_attention.py, impl "cpu")

They are compiled together into one library on first use, on the machine that runs
them (`c++ -O3 -march=native`, a few seconds), into a cache directory
($R1CI_CACHE_DIR, else ~/.cache/r1ci_jax) keyed by the sources, the jaxlib version
and the CPU's instruction-set flags, so later processes reuse it and a build for one
CPU never runs on another. When there is no compiler, the build fails, or
R1CI_CPU_KERNELS=0, `available()` is False (with a logged warning saying why) and
callers use their plain-JAX paths.
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
import threading

import jax

HERE = pathlib.Path(__file__).parent
SOURCES = (HERE / "cpu_matmul.cc", HERE / "cpu_decode_attention.cc")
HEADERS = (HERE / "cpu_parallel.h",)
TARGETS = {"r1ci_packed_matmul_f32": "R1ciPackedMatmulF32",
           "r1ci_decode_attention_f32": "R1ciDecodeAttentionF32"}
UNAVAILABLE = ("the C++ CPU kernels could not be built or loaded (see the warning logged by "
               "r1ci_jax.kernels.cpu_ffi.available(), or R1CI_CPU_KERNELS=0 is set)")
_log = logging.getLogger(__name__)
_build_lock = threading.Lock()  # one build per process when threads ask at once


def _cpu_fingerprint() -> str:
    """The CPU's instruction-set flags: a -march=native build must not run on another CPU."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")


def compiler() -> str:
    """$CXX, else the first of c++, g++, clang++ on PATH."""
    found = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if found is None:
        raise RuntimeError("no C++ compiler found (c++, g++, clang++ or $CXX)")
    return found


def library_path() -> pathlib.Path:
    """Where this machine's build of the kernels lives (it may not exist yet): keyed by the
    sources, compiler and flags, jaxlib version and CPU."""
    import jaxlib
    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    for part in (compiler(), *FLAGS, jaxlib.__version__, platform.machine(), _cpu_fingerprint()):
        digest.update(part.encode() + b"\0")
    root = pathlib.Path(os.environ.get("R1CI_CACHE_DIR") or pathlib.Path.home() / ".cache" / "r1ci_jax")
    return root / f"cpu_kernels-{digest.hexdigest()[:16]}.so"


def build(path: pathlib.Path) -> None:
    """Compile the kernels into path (atomically: concurrent builders each write a temp file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = pathlib.Path(tmp) / path.name
        command = [compiler(), *FLAGS, "-isystem", jax.ffi.include_dir(), *map(str, SOURCES), "-o", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        os.replace(out, path)


@functools.cache
def available() -> bool:
    """True when the kernel library is built (now, if needed) and its targets are registered
    with XLA:CPU."""
    if os.environ.get("R1CI_CPU_KERNELS", "1") == "0":
        return False
    try:
        path = library_path()
        with _build_lock:
            if not path.exists():
                build(path)
        library = ctypes.CDLL(str(path))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except (OSError, RuntimeError, AttributeError, KeyError, ValueError) as error:
        _log.warning("C++ CPU kernels unavailable, plain JAX is used instead (%s)", error)
        return False
    return True
