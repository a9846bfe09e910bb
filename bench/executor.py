"""Snippet throughput: our CodeExecutor vs a fresh `python file.py` per snippet (the paper's
executor: subprocess.run([python, file], timeout=10)), at the same concurrency.

    python bench/executor.py [--snippets 500] [--concurrency 4]

Each snippet imports numpy and prints a result. Both sides run `--concurrency` snippets at a
time (like that many rollouts waiting on their tool calls); latency is per snippet, excluding
queueing. Outputs are compared, so a fast-but-wrong executor cannot win.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time

from r1ci_jax.executor import CodeExecutor


def snippet(index: int) -> str:
    return f"import numpy as np\nx = np.arange({index + 1}, dtype=np.float64)\nprint({index}, float(np.sqrt(x @ x)))\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_subprocess_baseline(codes: list[str], concurrency: int) -> tuple[float, list[float], list[str]]:
    with tempfile.TemporaryDirectory() as folder:
        def one(index: int) -> tuple[float, str]:
            path = os.path.join(folder, f"snippet_{index}.py")
            with open(path, "w") as handle:
                handle.write(codes[index])
            started = time.perf_counter()
            done = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=10)
            return time.perf_counter() - started, done.stdout

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(len(codes))))
        elapsed = time.perf_counter() - started
    return elapsed, [latency for latency, _ in results], [output for _, output in results]


async def run_executor(codes: list[str], concurrency: int) -> tuple[float, float, list[float], list[str]]:
    started = time.perf_counter()
    async with CodeExecutor(num_workers=concurrency, timeout_s=10) as executor:
        startup = time.perf_counter() - started
        latencies = [0.0] * len(codes)
        outputs = [""] * len(codes)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(codes)):
            queue.put_nowait(index)

        async def client() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                begun = time.perf_counter()
                result = await executor.run(codes[index])
                latencies[index] = time.perf_counter() - begun
                outputs[index] = result.stdout if result.status == "ok" else f"{result.status}: {result.stderr}"

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return startup, elapsed, latencies, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snippets", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    codes = [snippet(index) for index in range(args.snippets)]

    startup, ours_s, ours_latency, ours_out = asyncio.run(run_executor(codes, args.concurrency))
    base_s, base_latency, base_out = run_subprocess_baseline(codes, args.concurrency)
    mismatches = sum(a != b for a, b in zip(ours_out, base_out))

    rows = [("subprocess per snippet (paper)", base_s, base_latency), ("CodeExecutor (forked, sandboxed)", ours_s,
                                                                       ours_latency)]
    print(f"{args.snippets} snippets, concurrency {args.concurrency}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}")
    print("| executor | total s | snippets/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for name, total, latency in rows:
        print(f"| {name} | {total:.2f} | {len(codes) / total:.1f} | {1000 * percentile(latency, 50):.1f} | "
              f"{1000 * percentile(latency, 99):.1f} |")
    print(f"speed-up (throughput): {base_s / ours_s:.1f}x; executor start-up (preload numpy, sympy): "
          f"{startup:.2f} s; output mismatches: {mismatches}")
    if mismatches:
        raise SystemExit("outputs differ between the two executors")


if __name__ == "__main__":
    main()
