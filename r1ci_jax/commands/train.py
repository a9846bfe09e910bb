"""`r1ci sft --config FILE` and `r1ci grpo --config FILE` (both take --resume and --set)."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    for name, help_text, func in (("sft", "multi-turn SFT on code-interpreter trajectories (jsonl chats)", _sft),
                                  ("grpo", "GRPO with code-interpreter rollouts", _grpo)):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help=f"YAML recipe, e.g. configs/{name}/tiny-cpu.yaml")
        p.add_argument("--resume", action="store_true",
                       help="continue the run in loop.output_dir from its latest checkpoint")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set loop.total_steps=10 (repeatable; YAML values)")
        p.set_defaults(func=func)


def _load(cls, args: argparse.Namespace):
    from r1ci_jax.config import from_dict, load_yaml
    from r1ci_jax.train.loop import apply_overrides
    data = apply_overrides(load_yaml(args.config), args.overrides)
    return from_dict(cls, data, where=str(args.config))


def _run(cls, runner, args: argparse.Namespace) -> int:
    from r1ci_jax.config import ConfigError
    from r1ci_jax.sharding import initialize_distributed
    initialize_distributed()
    try:
        config = _load(cls, args)
        records = runner(config, resume=args.resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if records:
        last = records[-1]
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("loss", "reward_mean", "kl") if k in last)
        print(f"done: {len(records)} step(s); last {shown}")
    return 0


def _sft(args: argparse.Namespace) -> int:
    from r1ci_jax.sft.config import SFTConfig
    from r1ci_jax.sft.loop import run_sft
    return _run(SFTConfig, run_sft, args)


def _grpo(args: argparse.Namespace) -> int:
    from r1ci_jax.rl.config import GRPOConfig
    from r1ci_jax.rl.loop import run_grpo
    return _run(GRPOConfig, run_grpo, args)
