"""Helpers shared by bench scripts: run a step in a fresh process (time, peak RSS), time a
JAX call, measure streaming bandwidth."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
import time


def run_isolated(code: str, timeout: float = 1800) -> dict:
    """Run `code` in a fresh interpreter; it must print one JSON line last. Adds peak RSS (MiB)."""
    wrapper = "\n".join([
        "import json, resource",
        "def rss_now_mib():",
        "    return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() / 2**20",
        textwrap.dedent(code),
        "_out = dict(result)",
        "_out['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024",
        "print(json.dumps(_out))",
    ])
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_seconds(fn, repeat: int) -> float:
    """Median wall time of fn() (its outputs awaited) over `repeat` calls, after one warm-up call."""
    import jax
    jax.block_until_ready(fn())  # compile / warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stream_bandwidth(repeat: int) -> float:
    """Bytes per second XLA reads in a sum over a 512 MiB array on the default device."""
    import jax
    import jax.numpy as jnp
    data = jnp.ones((512 * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    return data.nbytes / median_seconds(lambda: total(data), repeat)
