"""Sharded vs unsharded train-step time on 8 host devices, and param bytes per device per layout.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/sharding.py

On CPU the 8 "devices" share the same cores, so the time ratio shows the overhead of
the sharded program (collectives, partitioning), not a speed-up; bytes per device show
what each layout saves (fsdp: 1/N of the params).
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from r1ci_jax.models.qwen2 import Qwen2Config, forward, init_params  # noqa: E402
from r1ci_jax.sharding import (batch_sharding, bytes_per_device, make_mesh, param_shardings,  # noqa: E402
                               shard_params_from_host)

CONFIG = Qwen2Config(vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=8,
                     num_kv_heads=2, rope_theta=10000.0)
LAYOUTS = {"data (8,1,1)": (8, 1, 1), "fsdp (1,8,1)": (1, 8, 1), "data+fsdp (2,4,1)": (2, 4, 1),
           "fsdp+tensor (1,4,2)": (1, 4, 2), "all (2,2,2)": (2, 2, 2)}


def loss_fn(params, tokens):
    logits = forward(params, CONFIG, tokens)[0]
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


def time_step(step, *args, reps=5) -> float:
    jax.block_until_ready(step(*args))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(step(*args))
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    host = jax.tree.map(np.asarray, init_params(CONFIG, jax.random.PRNGKey(0)))
    tokens = np.random.RandomState(0).randint(0, CONFIG.vocab_size, (16, 128)).astype(np.int32)
    grad = jax.value_and_grad(loss_fn)
    one = jax.devices()[0]
    base = time_step(jax.jit(grad), jax.device_put(host, one), jax.device_put(tokens, one))
    total = sum(x.nbytes for x in jax.tree.leaves(host))
    print(f"model {CONFIG.num_params() / 1e6:.1f}M params, batch 16x128, unsharded step {base * 1e3:.1f} ms")
    print(f"{'layout':22s} {'step ms':>8s} {'ratio':>6s} {'param MiB/device':>17s} {'fraction':>9s}")
    for name, shape in LAYOUTS.items():
        mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
        shardings = param_shardings(CONFIG, mesh)
        params = shard_params_from_host(host, CONFIG, mesh)
        step = jax.jit(grad, in_shardings=(shardings, batch_sharding(mesh)), out_shardings=(None, shardings))
        t = time_step(step, params, jax.device_put(tokens, batch_sharding(mesh)))
        per_dev = max(bytes_per_device(params).values())
        print(f"{name:22s} {t * 1e3:8.1f} {t / base:6.2f} {per_dev / 2**20:17.2f} {per_dev / total:9.3f}")


if __name__ == "__main__":
    main()
