"""How fast can a batch-8 fp32 decode step be on this CPU? Memory and matmul ceilings.

    python bench/decode_roofline.py [--batch 8 --vocab 32000 --hidden 512 --layers 4 --intermediate 1408]

A decode step at small batch reads every weight once, so its floor is bytes / bandwidth.
This prints, measured in this process:
- the streaming read bandwidth XLA:CPU reaches (a sum over a 512 MiB array);
- the weight bandwidth its matmul reaches on LM-head-shaped weights [V, D] for several
  batch sizes, as x @ W.T and weight-first (W @ x.T), and that of our C++ kernel on the
  packed weight (r1ci_jax/kernels/cpu_matmul.py, what the CPU decode step uses),
  over 4 distinct weight copies (> L3) so every call streams from memory. If the rate
  falls as the batch grows, the matmul is bound by compute, not memory;
- the bytes a step of the `bench/sampler.py` model reads and the step time each rate allows.
Compare with the step time `bench/sampler.py` implies (its wall time / new tokens).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _util import median_seconds, stream_bandwidth


def matmul_bandwidth(weights: list[jax.Array], batch: int, form: str, repeat: int) -> float:
    """form: "plain" (x @ W.T), "weight_first" (XLA's dot as (W @ x.T).T) or "packed"
    (the C++ kernel of r1ci_jax/kernels/cpu_matmul.py on pack(W))."""
    x = jnp.ones((batch, weights[0].shape[1]), jnp.float32)
    if form == "packed":
        from r1ci_jax.kernels import cpu_matmul
        out = weights[0].shape[0]
        packed = [cpu_matmul.pack(w) for w in weights]
        run = jax.jit(lambda x, ws: sum(cpu_matmul.packed_matmul(x, w, out, impl="kernel").sum() for w in ws))
        seconds = median_seconds(lambda: run(x, packed).block_until_ready(), repeat)
        return sum(w.nbytes for w in weights) / seconds
    if form == "weight_first":
        one = lambda x, w: jax.lax.optimization_barrier(jax.lax.dot_general(w, x, (((1,), (1,)), ((), ())))).T
    else:
        one = lambda x, w: x @ w.T
    run = jax.jit(lambda x, ws: sum(one(x, w).sum() for w in ws))  # all of every product is used
    seconds = median_seconds(lambda: run(x, weights).block_until_ready(), repeat)
    return sum(w.nbytes for w in weights) / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1408)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--cache-slots", type=int, default=256, help="live KV slots per row (mean over a run)")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    V, D, F, L = args.vocab, args.hidden, args.intermediate, args.layers
    Dh = D // args.heads
    rng = np.random.default_rng(0)
    weights = [jnp.asarray(rng.standard_normal((V, D)), jnp.float32) for _ in range(4)]

    print(f"jax {jax.__version__} on {jax.default_backend()}; LM-head-shaped weights [{V}, {D}] fp32, "
          f"4 copies ({sum(w.nbytes for w in weights) / 2**20:.0f} MiB)")
    stream = stream_bandwidth(args.repeat)
    print(f"streaming read (XLA sum over 512 MiB): {stream / 1e9:6.1f} GB/s")
    from r1ci_jax.kernels import cpu_ffi
    forms = ("plain", "weight_first") + (("packed",) if cpu_ffi.available() else ())
    rates, packed_rates = {}, {}
    for batch in sorted({1, 4, args.batch, 2 * args.batch}):
        rate = {form: matmul_bandwidth(weights, batch, form, args.repeat) for form in forms}
        rates[batch] = max(rate["plain"], rate["weight_first"])
        packed_rates[batch] = rate.get("packed")
        kernel = f"   C++ packed {rate['packed'] / 1e9:6.1f}" if "packed" in rate else ""
        print(f"matmul batch {batch:3d}, GB/s of weights: XLA x @ W.T {rate['plain'] / 1e9:6.1f}   XLA weight-first "
              f"{rate['weight_first'] / 1e9:6.1f} ({2 * batch * rates[batch] / 4 / 1e9:4.0f} GFLOP/s){kernel}")

    layer = D * (args.heads + 2 * args.kv_heads) * Dh + args.heads * Dh * D + 3 * D * F
    weight_bytes = 4 * (V * D + L * layer)
    kv_bytes = 4 * 2 * L * args.batch * args.cache_slots * args.kv_heads * Dh
    step_bytes = weight_bytes + kv_bytes
    print(f"one decode step of the bench/sampler.py model (batch {args.batch}): {weight_bytes / 1e6:.0f} MB of "
          f"weights + {kv_bytes / 1e6:.0f} MB of live KV cache")
    print(f"  floor at streaming bandwidth:         {step_bytes / stream * 1e3:5.2f} ms per step")
    print(f"  floor at XLA's batch-{args.batch} matmul rate:    "
          f"{(weight_bytes / rates[args.batch] + kv_bytes / stream) * 1e3:5.2f} ms per step")
    if packed_rates[args.batch]:
        print(f"  floor at the C++ kernel's batch-{args.batch} rate: "
              f"{(weight_bytes / packed_rates[args.batch] + kv_bytes / stream) * 1e3:5.2f} ms per step")


if __name__ == "__main__":
    main()
