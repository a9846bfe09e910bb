"""`r1ci convert hf-to-orbax SRC DST` and `r1ci convert orbax-to-hf SRC DST`."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

# Tokenizer and generation files travel with the weights so the export is usable as is.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
               "merges.txt", "chat_template.jinja", "generation_config.json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert checkpoints between HuggingFace and Orbax")
    conv = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = conv.add_parser("hf-to-orbax", help="HF safetensors directory -> Orbax params checkpoint")
    a.add_argument("src", help="HuggingFace Qwen2 model directory (config.json + safetensors)")
    a.add_argument("dst", help="output directory")
    a.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast params (default: keep the checkpoint's dtype)")
    a.set_defaults(func=_hf_to_orbax)
    b = conv.add_parser("orbax-to-hf", help="Orbax params checkpoint -> HF safetensors directory")
    b.add_argument("src", help="directory written by hf-to-orbax or a trainer's params export")
    b.add_argument("dst", help="output HuggingFace directory")
    b.add_argument("--max-shard-size", type=int, default=5 * 1024**3, help="bytes per safetensors shard")
    b.set_defaults(func=_orbax_to_hf)


def _copy_side_files(src: Path, dst: Path) -> None:
    for name in _SIDE_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def _hf_to_orbax(args: argparse.Namespace) -> int:
    from r1ci_jax.checkpoint.hf import CheckpointError, load_hf
    from r1ci_jax.checkpoint.orbax import save_params

    start = time.perf_counter()
    try:
        config, params = load_hf(args.src, dtype=args.dtype, progress=True)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dst = save_params(params, config, args.dst)
    _copy_side_files(Path(args.src), dst)
    print(f"wrote {dst} ({config.num_params() / 1e6:.1f}M params, {config.param_dtype}) "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


def _orbax_to_hf(args: argparse.Namespace) -> int:
    from r1ci_jax.checkpoint.hf import save_hf
    from r1ci_jax.checkpoint.orbax import load_params

    start = time.perf_counter()
    try:
        config, params = load_params(args.src)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dst = save_hf(params, config, args.dst, max_shard_size=args.max_shard_size, progress=True)
    _copy_side_files(Path(args.src), dst)
    print(f"wrote {dst} ({config.num_params() / 1e6:.1f}M params) in {time.perf_counter() - start:.1f}s")
    return 0
