"""`r1ci generate --model DIR --prompt TEXT [--prompt TEXT ...]`: sample from a model.

DIR is a HuggingFace Qwen2 directory (config.json + safetensors) or an r1ci Orbax
params export; its tokenizer files are used when present. Without a tokenizer,
prompts are comma-separated token ids (`--prompt 1,2,3`) and only ids are printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a model (batched, KV cache, Pallas kernels)")
    p.add_argument("--model", required=True, help="HF Qwen2 directory or r1ci Orbax params directory")
    p.add_argument("--prompt", action="append", default=[],
                   help="a prompt (repeat for a batch); without a tokenizer: comma-separated token ids")
    p.add_argument("--prompt-file", help="a file with one prompt per line (added to --prompt)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=2048, help="most tokens per row (prompt + generated)")
    p.add_argument("--kernels", choices=("auto", "pallas", "reference"), default="auto",
                   help="Pallas kernels on TPU/GPU (auto), always (pallas; interpreted on CPU) or never")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="cast params")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    p.set_defaults(func=run)


def _load(model_dir: Path, dtype: str | None):
    """(config, params) from a HF directory (safetensors) or else an Orbax params export."""
    from r1ci_jax.checkpoint.hf import INDEX_FILE, SINGLE_FILE, load_hf
    if (model_dir / SINGLE_FILE).is_file() or (model_dir / INDEX_FILE).is_file():
        return load_hf(model_dir, dtype=dtype)
    from r1ci_jax.checkpoint.orbax import load_params
    config, params = load_params(model_dir)
    if dtype is not None:
        import jax
        from r1ci_jax.models.qwen2 import with_dtype
        config = with_dtype(config, dtype, dtype)
        params = jax.tree.map(lambda x: x.astype(config.param_jnp_dtype), params)
    return config, params


def _tokenizer(model_dir: Path):
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(model_dir))


def run(args: argparse.Namespace) -> int:
    from r1ci_jax.sampling import Sampler, SamplingParams

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        print(f"error: --model {model_dir} is not a directory", file=sys.stderr)
        return 2
    prompts = list(args.prompt)
    if args.prompt_file:
        prompts += [line for line in Path(args.prompt_file).read_text().splitlines() if line]
    if not prompts:
        print("error: give at least one --prompt or a --prompt-file", file=sys.stderr)
        return 2
    try:
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, stop=args.stop, seed=args.seed)
        tokenizer = _tokenizer(model_dir)
        if tokenizer is None:
            prompts = [[int(t) for t in p.split(",")] for p in prompts]
        config, params = _load(model_dir, args.dtype)
        sampler = Sampler(params, config, tokenizer, max_len=args.max_len, kernels=args.kernels)
        start = time.perf_counter()
        outputs = sampler.generate(prompts, sampling)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    for prompt, out in zip(prompts, outputs):
        if args.json:
            print(json.dumps({"prompt": prompt, "text": out.text, "token_ids": out.token_ids,
                              "logprobs": out.logprobs, "finish_reason": out.finish_reason,
                              "stop_reason": out.stop_reason}))
        else:
            body = out.text if out.text is not None else " ".join(map(str, out.token_ids))
            print(f"--- [{out.finish_reason}, {len(out.token_ids)} tokens]\n{body}")
    total = sum(len(o.token_ids) for o in outputs)
    print(f"{total} tokens in {seconds:.2f}s ({total / max(seconds, 1e-9):.1f} tokens/s, compile included)",
          file=sys.stderr)
    return 0
