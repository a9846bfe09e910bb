"""`r1ci` command line: a thin dispatcher over subcommand modules.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds
its parser and sets `func=callable(args) -> int`. Modules are imported lazily so
`r1ci --help` and host-only commands do not pay for importing jax.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# module path of each subcommand group; each module's register() adds its parsers.
_SUBCOMMAND_MODULES = (
    "r1ci_jax.commands.convert",
    "r1ci_jax.commands.curriculum",
    "r1ci_jax.commands.demo",
    "r1ci_jax.commands.evaluate",
    "r1ci_jax.commands.generate",
    "r1ci_jax.commands.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r1ci", description="Train and run LLMs that reason with a code interpreter (JAX)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
