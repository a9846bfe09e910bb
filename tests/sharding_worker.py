"""Run by test_sharding.py as one of two processes: sharded forward over 8 global devices."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from r1ci_jax.models.qwen2 import Qwen2Config, forward, init_params
from r1ci_jax.sharding import (batch_sharding, host_batch_to_global, initialize_distributed, make_mesh,
                               param_shardings, shard_params_from_host)


def main() -> int:
    initialize_distributed()
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                         num_kv_heads=2, rope_theta=10000.0)
    host_params = jax.tree.map(np.asarray, init_params(config, jax.random.PRNGKey(0)))
    tokens = np.random.RandomState(0).randint(0, 128, (8, 12)).astype(np.int32)
    # single-process truth, on this process's first device only
    ref = np.asarray(jax.jit(forward, static_argnums=1)(host_params, config, tokens)[0])

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = shard_params_from_host(host_params, config, mesh)
    pid = jax.process_index()
    local_rows = tokens[pid * 4:(pid + 1) * 4]
    global_tokens = host_batch_to_global(local_rows, mesh)
    out_sharding = batch_sharding(mesh, 3)
    fwd = jax.jit(lambda p, t: forward(p, config, t)[0],
                  in_shardings=(param_shardings(config, mesh), batch_sharding(mesh, 2)),
                  out_shardings=out_sharding)
    logits = fwd(params, global_tokens)
    worst = 0.0
    for shard in logits.addressable_shards:
        worst = max(worst, float(np.abs(np.asarray(shard.data) - ref[shard.index]).max()))
    print(f"process {pid} max_abs_diff {worst:.3g}", flush=True)
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
