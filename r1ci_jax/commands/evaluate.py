"""`r1ci eval --model DIR --tasks a,b --modes text,code --n 200`: greedy accuracy per task.

Text mode never runs code (the text-only baseline); code mode runs every ```python block in
the sandboxed executor and feeds the result back. Prints a table (accuracy and code calls
per answer for each mode, an average row, executor failures) and writes it as json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="greedy per-task accuracy, text-only vs with code")
    p.add_argument("--model", required=True, help="HF Qwen2 directory (with tokenizer files) or Orbax params export")
    p.add_argument("--tasks", required=True, help="comma-separated task names (see r1ci_jax.tasks.list_tasks)")
    p.add_argument("--task-options", default="{}",
                   help='JSON of per-task options, e.g. \'{"multiplication": {"digits_a": 4}}\'')
    p.add_argument("--modes", default="text,code", help="comma-separated: text, code")
    p.add_argument("--n", type=int, default=200, help="held-out examples per task")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--system-prompt", choices=("default", "short", "none"), default="default")
    p.add_argument("--max-total-tokens", type=int, default=1024, help="response tokens per episode")
    p.add_argument("--max-code-calls", type=int, default=8)
    p.add_argument("--max-len", type=int, default=2048, help="KV-cache length per row")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="executor processes")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per code execution")
    p.add_argument("--out", default=None, help="json output (default: MODEL/eval.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from r1ci_jax.commands.generate import _load, _tokenizer
    from r1ci_jax.executor import CodeExecutor
    from r1ci_jax.rollout.evaluate import evaluate_tasks, format_table, save_scores
    from r1ci_jax.sampling import Sampler
    from r1ci_jax.tasks import get_task

    model_dir = Path(args.model)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("text", "code")]
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        if not model_dir.is_dir():
            raise ValueError(f"--model {model_dir} is not a directory")
        if bad or not modes:
            raise ValueError(f"--modes {args.modes!r}: each mode must be 'text' or 'code'")
        if not names:
            raise ValueError("--tasks is empty")
        options = json.loads(args.task_options)
        if not isinstance(options, dict) or any(k not in names for k in options):
            raise ValueError(f"--task-options must map some of {names} to option dicts, got {args.task_options!r}")
        tasks = {name: get_task(name, **options.get(name, {})) for name in names}
        tokenizer = _tokenizer(model_dir)
        if tokenizer is None:
            raise ValueError(f"{model_dir} has no tokenizer files (tokenizer.json); eval needs a tokenizer")
    except (ValueError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config, params = _load(model_dir, None)
    sampler = Sampler(params, config, tokenizer, max_len=args.max_len)

    async def go():
        async with CodeExecutor(num_workers=args.workers, timeout_s=args.timeout) as executor:
            with tqdm(total=len(names) * len(modes) * args.n, desc="eval", unit="episode") as bar:
                return await evaluate_tasks(sampler, executor, tasks, modes=modes, n=args.n, seed=args.seed,
                                            split=args.split, batch_size=args.batch_size,
                                            system_prompt=args.system_prompt, max_total_tokens=args.max_total_tokens,
                                            max_code_calls=args.max_code_calls, exec_timeout_s=args.timeout,
                                            progress=bar)

    start = time.perf_counter()
    scores = asyncio.run(go())
    print(format_table(scores))
    out = Path(args.out) if args.out else model_dir / "eval.json"
    save_scores(scores, out, extra={"model": str(model_dir), "n": args.n, "seconds": time.perf_counter() - start})
    print(f"wrote {out}")
    return 0
