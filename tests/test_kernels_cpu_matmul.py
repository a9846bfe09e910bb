"""The C++ decode matmul (an XLA FFI call) equals a float64 NumPy matmul, inside jit and a
while loop; packing is lossless; bad shapes give clear errors; the C++ kernels build here,
and a failed build (cpu_ffi) falls back to plain JAX with the reason logged."""
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1ci_jax.kernels import cpu_ffi, cpu_matmul

HAS_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
needs_kernel = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on this machine")


def _operands(O, K, B, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((O, K)).astype(np.float32), rng.standard_normal((B, K)).astype(np.float32)


@needs_kernel
def test_kernels_build_and_register_where_a_compiler_exists():
    assert cpu_ffi.available()
    assert cpu_ffi.library_path().exists()


# (out, in, batch): partial last panel, odd panel counts (a single-panel tail), batch > 8
# (two row tiles, the second partial), K = 1, and a head-sized weight split across threads.
SHAPES = [(16, 1, 1), (37, 19, 3), (48, 33, 9), (17, 8, 16), (5, 7, 2), (1000, 64, 13), (4096, 256, 8),
          (32000, 128, 8)]


@needs_kernel
@pytest.mark.parametrize("O,K,B", SHAPES)
def test_kernel_equals_numpy(O, K, B):
    w, x = _operands(O, K, B)
    got = jax.jit(cpu_matmul.packed_matmul, static_argnums=2, static_argnames="impl")(
        jnp.asarray(x), cpu_matmul.pack(jnp.asarray(w)), O, impl="kernel")
    want = x.astype(np.float64) @ w.astype(np.float64).T
    assert got.shape == (B, O) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.sqrt(K))


@pytest.mark.parametrize("O,K,B", SHAPES[:4])
def test_reference_equals_numpy(O, K, B):
    w, x = _operands(O, K, B, seed=1)
    got = cpu_matmul.packed_matmul(jnp.asarray(x), cpu_matmul.pack(jnp.asarray(w)), O, impl="reference")
    np.testing.assert_allclose(np.asarray(got), x.astype(np.float64) @ w.astype(np.float64).T,
                               rtol=1e-5, atol=1e-5 * np.sqrt(K))


@needs_kernel
def test_kernel_in_a_while_loop_feeds_its_own_output():
    """Each trip multiplies by a square weight: any trip that reads stale or unfinished
    output (threads not joined) breaks the chain."""
    w, x = _operands(64, 64, 8, seed=2)
    w = w / np.linalg.norm(w, 2)  # keep the chain bounded
    packed = cpu_matmul.pack(jnp.asarray(w))
    run = jax.jit(lambda x: jax.lax.fori_loop(0, 20, lambda _, x: cpu_matmul.packed_matmul(x, packed, 64,
                                                                                         impl="kernel"), x))
    want = x.astype(np.float64)
    for _ in range(20):
        want = want @ w.astype(np.float64).T
    np.testing.assert_allclose(np.asarray(run(jnp.asarray(x))), want, rtol=1e-4, atol=1e-5)


def test_pack_layout_is_panels_of_sixteen_rows_zero_padded():
    w = np.arange(21 * 3, dtype=np.float32).reshape(21, 3)
    packed = np.asarray(cpu_matmul.pack(jnp.asarray(w)))
    assert packed.shape == (2, 3, 16)
    np.testing.assert_array_equal(packed[1, :, 4], w[20])     # row 20 = panel 1, lane 4
    np.testing.assert_array_equal(packed[0, 2, :], w[:16, 2])
    np.testing.assert_array_equal(packed[1, :, 5:], 0.0)     # rows 21..31 are padding


def test_bad_shapes_and_impl_are_refused():
    packed = cpu_matmul.pack(jnp.ones((20, 8)))
    with pytest.raises(ValueError, match=r"x \(2, 7\) and w_packed \(2, 8, 16\)"):
        cpu_matmul.packed_matmul(jnp.ones((2, 7)), packed, 20)
    with pytest.raises(ValueError, match=r"W \[33, 8\]"):  # 33 rows need 3 panels
        cpu_matmul.packed_matmul(jnp.ones((2, 8)), packed, 33)
    with pytest.raises(ValueError, match="impl='fast'"):
        cpu_matmul.packed_matmul(jnp.ones((2, 8)), packed, 20, impl="fast")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        cpu_matmul.pack(jnp.ones((4,)))


def test_failed_build_falls_back_with_a_warning(tmp_path, monkeypatch, caplog):
    """A broken compiler: available() is False (plain JAX is used), the compiler's
    message is logged, and forcing a kernel says why it cannot run."""
    from r1ci_jax.kernels import decode_attention as da
    fake = tmp_path / "broken-c++"
    fake.write_text("#!/bin/sh\necho 'broken-c++: no such luck' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("R1CI_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger=cpu_ffi.__name__):
        assert cpu_ffi.available.__wrapped__() is False
    assert "no such luck" in caplog.text
    assert not cpu_ffi.library_path().exists()
    monkeypatch.setattr(cpu_ffi, "available", lambda: False)
    w, x = _operands(20, 8, 2)
    auto = cpu_matmul.packed_matmul(jnp.asarray(x), cpu_matmul.pack(jnp.asarray(w)), 20)
    np.testing.assert_allclose(np.asarray(auto), x @ w.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="could not be built"):
        cpu_matmul.packed_matmul(jnp.asarray(x), cpu_matmul.pack(jnp.asarray(w)), 20, impl="kernel")
    assert da.resolve_impl("auto") == "blocked"
    q, k = jnp.ones((1, 2, 4)), jnp.ones((1, 3, 1, 4))
    with pytest.raises(RuntimeError, match="could not be built"):
        da.decode_attention(q, k, k, jnp.asarray([2], jnp.int32), impl="cpu")


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("R1CI_CPU_KERNELS", "0")
    assert cpu_ffi.available.__wrapped__() is False
