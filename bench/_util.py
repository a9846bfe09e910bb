"""Helpers shared by bench scripts: run a step in a fresh process, report time and peak RSS."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap


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
