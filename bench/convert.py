"""Convert a random Qwen2.5-0.5B-shaped bf16 checkpoint both ways; time and peak RSS vs transformers.

    python bench/convert.py [--preset qwen2.5-0.5b] [--workdir /tmp/r1ci-bench-convert]

Each step runs in a fresh process so peak RSS is its own. Ratios are ours / transformers
(time: lower is better) and peak RSS / checkpoint size.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import run_isolated  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen2.5-0.5b")
    ap.add_argument("--workdir", default="/tmp/r1ci-bench-convert")
    ap.add_argument("--repeat", type=int, default=3, help="runs per step; the fastest counts")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src, orb, back, hf_out = work / "src", work / "orbax", work / "back", work / "hf_out"

    run_isolated(f"""
        import jax
        from r1ci_jax.models.qwen2 import Qwen2Config, init_params
        from r1ci_jax.checkpoint.hf import save_hf
        config = Qwen2Config.preset({args.preset!r})
        save_hf(init_params(config, jax.random.PRNGKey(0)), config, {str(src)!r})
        result = {{}}
    """)
    size_mib = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2**20

    best = lambda code: min((run_isolated(code) for _ in range(args.repeat)), key=lambda r: r["seconds"])
    ours_in = best(f"""
        import jax, time
        from r1ci_jax.checkpoint.hf import load_hf
        from r1ci_jax.checkpoint.orbax import save_params
        base = rss_now_mib()
        t = time.perf_counter()
        config, params = load_hf({str(src)!r})
        save_params(params, config, {str(orb)!r})
        result = {{"seconds": time.perf_counter() - t, "base_rss_mib": base}}
    """)
    ours_out = best(f"""
        import jax, time
        from r1ci_jax.checkpoint.hf import save_hf
        from r1ci_jax.checkpoint.orbax import load_params
        base = rss_now_mib()
        t = time.perf_counter()
        config, params = load_params({str(orb)!r})
        save_hf(params, config, {str(back)!r})
        result = {{"seconds": time.perf_counter() - t, "base_rss_mib": base}}
    """)
    ours_hf = best(f"""
        import time
        from r1ci_jax.checkpoint.hf import load_hf, save_hf
        base = rss_now_mib()
        t = time.perf_counter()
        config, params = load_hf({str(src)!r})
        save_hf(params, config, {str(back)!r})
        result = {{"seconds": time.perf_counter() - t, "base_rss_mib": base}}
    """)
    theirs = best(f"""
        import time, torch, transformers
        base = rss_now_mib()
        t = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained({str(src)!r}, dtype=torch.bfloat16)
        model.save_pretrained({str(hf_out)!r})
        result = {{"seconds": time.perf_counter() - t, "base_rss_mib": base}}
    """)
    print(f"checkpoint: {args.preset} bf16, {size_mib:.0f} MiB")
    print(f"{'step':38s} {'seconds':>8s} {'peak RSS MiB':>13s} {'after imports':>14s} {'added/ckpt':>11s}")
    rows = [("ours HF -> Orbax (tensor by tensor)", ours_in), ("ours Orbax -> HF", ours_out),
            ("ours HF -> params -> HF", ours_hf), ("transformers from_pretrained+save", theirs)]
    for name, r in rows:
        added = r["peak_rss_mib"] - r["base_rss_mib"]
        print(f"{name:38s} {r['seconds']:8.2f} {r['peak_rss_mib']:13.0f} {r['base_rss_mib']:14.0f} "
              f"{added / size_mib:11.2f}")
    print(f"time ratio ours(HF->params->HF) / transformers: {ours_hf['seconds'] / theirs['seconds']:.2f}")
    added = lambda r: r["peak_rss_mib"] - r["base_rss_mib"]
    print(f"peak RSS ratio ours / transformers: {ours_hf['peak_rss_mib'] / theirs['peak_rss_mib']:.2f} "
          f"(memory added by the conversion: {added(ours_hf) / added(theirs):.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
