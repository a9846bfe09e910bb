"""Decode attention: bytes read per second of each implementation, and its fraction of peak.

    python bench/decode_attention.py                  # CPU: small shape, peak = measured streaming read
    python bench/decode_attention.py --shape 7b       # GPU/TPU: Qwen2.5-7B decode shape, bf16
    python bench/decode_attention.py --peak-gbps 3350 # override the peak (H100 SXM HBM3)

A decode step's attention reads every live K/V slot of its layer once: bytes =
2 * sum(lengths) * K * Dh * itemsize (+ q and out, negligible). This times one
layer over a stacked cache (the sampler's call), for every implementation the
backend runs natively ("reference" and the backend's kernels: "gpu" on GPU, "tpu"
on TPU, "blocked" and "cpu" on CPU), and prints GB/s, the ratio to the reference in
this process, and the fraction of the device's peak. Peak: --peak-gbps, else the
HBM bandwidth of a known accelerator (table below, from vendor specs), else (CPU) the
streaming read measured here. The issue's GPU target is >= 60% of HBM peak.
"""
from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from _util import median_seconds, stream_bandwidth

# Vendor HBM bandwidth, GB/s, by substring of jax's device_kind.
HBM_PEAK_GBPS = {"H200": 4800, "H100": 3350, "A100": 2039, "TPU v6": 1640, "TPU v5p": 2765, "TPU v5": 819,
                 "TPU v4": 1200}
# (batch, query heads, kv heads, head_dim, cache slots, dtype)
SHAPES = {"small": (8, 8, 2, 64, 1024, "float32"), "7b": (32, 28, 4, 128, 4096, "bfloat16"),
          "0.5b": (64, 14, 2, 64, 4096, "bfloat16")}


def peak_gbps(args) -> tuple[float, str]:
    if args.peak_gbps:
        return args.peak_gbps, "--peak-gbps"
    kind = jax.devices()[0].device_kind
    for name, gbps in HBM_PEAK_GBPS.items():
        if name in kind:
            return gbps, f"{kind} HBM spec"
    return stream_bandwidth(args.repeat) / 1e9, f"{kind}: measured streaming read"


def native_impls() -> list[str]:
    from r1ci_jax.kernels import cpu_ffi
    backend = jax.default_backend()
    if backend in ("gpu", "tpu"):
        return ["reference", backend]
    return ["reference", "blocked"] + (["cpu"] if cpu_ffi.available() else [])


def main() -> None:
    from r1ci_jax.kernels.decode_attention import decode_attention
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="default: small on CPU, 7b on accelerators")
    ap.add_argument("--layers", type=int, default=2, help="layers in the stacked cache (one is read)")
    ap.add_argument("--fill", type=float, default=0.5, help="mean live fraction of the cache per row")
    ap.add_argument("--peak-gbps", type=float, default=None)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    shape = args.shape or ("small" if jax.default_backend() == "cpu" else "7b")
    B, H, K, Dh, S, dtype = SHAPES[shape]
    rng = np.random.default_rng(0)
    cache = lambda: jnp.asarray(rng.standard_normal((args.layers, B, S, K, Dh)), dtype)
    k_cache, v_cache = cache(), cache()
    q = jnp.asarray(rng.standard_normal((B, H, Dh)), dtype)
    # Ragged rows around the mean fill, 1 to S slots.
    lengths = np.clip(rng.normal(args.fill * S, 0.25 * args.fill * S, B).astype(np.int32), 1, S)
    lengths = jnp.asarray(lengths)
    live_bytes = 2 * int(lengths.sum()) * K * Dh * jnp.dtype(dtype).itemsize + 2 * q.nbytes
    peak, source = peak_gbps(args)
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); shape {shape}: "
          f"B={B} H={H} K={K} Dh={Dh} S={S} {dtype}, mean fill {float(lengths.mean()) / S:.0%}; "
          f"{live_bytes / 1e6:.1f} MB live per layer; peak {peak:.0f} GB/s ({source})")
    results = {}
    for impl in native_impls():
        fn = jax.jit(functools.partial(decode_attention, impl=impl))
        try:
            seconds = median_seconds(lambda: fn(q, k_cache, v_cache, lengths, layer=jnp.int32(1)), args.repeat)
        except Exception as error:  # a kernel that does not support this shape / chip: say so, go on
            print(f"  {impl:10s} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            continue
        results[impl] = seconds
        gbps = live_bytes / seconds / 1e9
        ratio = results["reference"] / seconds if "reference" in results else float("nan")
        print(f"  {impl:10s} {seconds * 1e6:9.1f} us  {gbps:8.1f} GB/s  {gbps / peak:6.1%} of peak  "
              f"{ratio:5.2f}x reference")


if __name__ == "__main__":
    main()
