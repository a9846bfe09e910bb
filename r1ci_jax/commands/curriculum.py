"""`r1ci curriculum`: write curriculum stage mixtures from an eval run's pass rates."""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "curriculum",
        help="write curriculum stage mixture files from per-task pass rates",
        description=(
            "Sort tasks by improvement potential 4p(1-p) of their pass rate p, cut them into "
            "stages from high to low potential, and write each stage as a mixture YAML "
            "(stage_<k>.yaml) plus a curriculum.json summary."
        ),
    )
    parser.add_argument("--pass-rates", required=True, help="JSON of per-task pass rates from an eval run")
    parser.add_argument("--out-dir", required=True, help="folder for stage_<k>.yaml and curriculum.json")
    parser.add_argument(
        "--mixture", help="base mixture YAML: stage entries copy its task options and weights"
    )
    parser.add_argument("--config", help="curriculum settings YAML (keys of CurriculumConfig); flags override")
    parser.add_argument("--num-stages", type=int, help="number of stages (default 3)")
    parser.add_argument("--min-potential", type=float, help="leave out tasks at or below this potential (default 0)")
    parser.add_argument("--weighting", choices=("potential", "base"), help="stage weights (default potential)")
    parser.add_argument(
        "--cumulative", action="store_true", default=None, help="each stage also keeps the tasks of earlier stages"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from r1ci_jax.config import ConfigError, from_yaml
    from r1ci_jax.data.curriculum import CurriculumConfig, load_pass_rates, plan_curriculum, write_stages
    from r1ci_jax.data.mixture import load_mixture

    try:
        config = from_yaml(CurriculumConfig, args.config) if args.config else CurriculumConfig()
        overrides = {
            "num_stages": args.num_stages,
            "min_potential": args.min_potential,
            "weighting": args.weighting,
            "cumulative": args.cumulative,
        }
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
        base = load_mixture(args.mixture) if args.mixture else None
        plan = plan_curriculum(load_pass_rates(args.pass_rates), base, config)
        files = write_stages(plan, args.out_dir)
    except (ConfigError, KeyError, ValueError) as e:
        print(f"r1ci curriculum: error: {e}", file=sys.stderr)
        return 2
    for stage, file in zip(plan.stages, files):
        tasks = ", ".join(f"{label} (p={p:.2f})" for label, p in stage.pass_rates.items())
        print(f"{file}: {tasks}")
    if plan.dropped:
        print(f"left out (no potential): {', '.join(sorted(plan.dropped))}")
    return 0
