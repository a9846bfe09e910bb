"""Curriculum staging on a given pass-rate table; the stage files and the CLI step."""
import json
from pathlib import Path

import pytest

from r1ci_jax.cli import main
from r1ci_jax.config import ConfigError
from r1ci_jax.data.curriculum import (
    CurriculumConfig,
    improvement_potential,
    load_pass_rates,
    plan_curriculum,
    write_pass_rates,
    write_stages,
)
from r1ci_jax.data.mixture import MixtureConfig, TaskSpec, build_tasks, load_mixture

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "curriculum"

# p -> 4p(1-p): 0.5 -> 1.0, 0.4/0.6 -> 0.96, 0.3 -> 0.84, 0.1 -> 0.36, 0.95 -> 0.19, 0/1 -> 0
PASS_RATES = {
    "multiplication": 0.5,
    "sorting": 0.6,
    "letter_count": 0.3,
    "modular_arithmetic": 0.1,
    "game24": 0.0,
    "date_arithmetic": 0.95,
}


def labels(stage):
    return [spec.name or spec.task for spec in stage.mixture.tasks]


def test_improvement_potential():
    assert improvement_potential(0.5) == 1.0
    assert improvement_potential(0.0) == improvement_potential(1.0) == 0.0
    assert improvement_potential(0.25) == pytest.approx(0.75)


def test_stages_from_high_to_low_potential():
    plan = plan_curriculum(PASS_RATES, config=CurriculumConfig(num_stages=3))
    assert [labels(s) for s in plan.stages] == [
        ["multiplication", "sorting"],
        ["letter_count", "modular_arithmetic"],
        ["date_arithmetic"],
    ]
    assert plan.dropped == {"game24": 0.0}
    weights = {spec.task: spec.weight for s in plan.stages for spec in s.mixture.tasks}
    assert weights["multiplication"] == 1.0 and weights["sorting"] == pytest.approx(0.96)
    assert plan.stages[2].potentials == {"date_arithmetic": pytest.approx(0.19)}


def test_options_cumulative_base_weights_and_threshold():
    plan = plan_curriculum(PASS_RATES, config=CurriculumConfig(num_stages=2, cumulative=True, weighting="base"))
    assert [labels(s) for s in plan.stages] == [
        ["multiplication", "sorting", "letter_count"],
        ["multiplication", "sorting", "letter_count", "modular_arithmetic", "date_arithmetic"],
    ]
    assert all(spec.weight == 1.0 for s in plan.stages for spec in s.mixture.tasks)
    plan = plan_curriculum(PASS_RATES, config=CurriculumConfig(num_stages=10, min_potential=0.5))
    assert [labels(s) for s in plan.stages] == [["multiplication"], ["sorting"], ["letter_count"]]
    assert set(plan.dropped) == {"modular_arithmetic", "game24", "date_arithmetic"}


def test_base_mixture_entries_are_copied(tmp_path):
    base = MixtureConfig(
        tasks=[
            TaskSpec("multiplication", weight=2.0, options={"digits_a": 3}),
            TaskSpec("multiplication", name="mult_hard", options={"digits_a": 9}),
            TaskSpec("sorting", options={"count": 3}),
        ]
    )
    rates = {"multiplication": 0.9, "mult_hard": 0.2, "sorting": 0.5}
    plan = plan_curriculum(rates, base, CurriculumConfig(num_stages=3))
    first, second, third = (s.mixture.tasks for s in plan.stages)
    assert first[0].task == "sorting" and first[0].options == {"count": 3}
    assert second[0].name == "mult_hard" and second[0].options == {"digits_a": 9}
    assert third[0].weight == pytest.approx(2.0 * improvement_potential(0.9))
    files = write_stages(plan, tmp_path / "out")
    assert [f.name for f in files] == ["stage_1.yaml", "stage_2.yaml", "stage_3.yaml"]
    reloaded = load_mixture(files[1])
    assert list(build_tasks(reloaded)) == ["mult_hard"]
    assert "p=0.2000" in files[1].read_text()
    summary = json.loads((tmp_path / "out" / "curriculum.json").read_text())
    assert summary["stages"][0]["tasks"]["sorting"]["potential"] == 1.0


def test_bad_pass_rates_are_named(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'multiplication'"):
        plan_curriculum({"multiplicaton": 0.5})
    base = MixtureConfig(tasks=[TaskSpec("sorting"), TaskSpec("game24")])
    with pytest.raises(ConfigError, match=r"not in the base mixture: 'sortng' \(did you mean 'sorting'\?\)"):
        plan_curriculum({"sortng": 0.5, "game24": 0.5}, base)
    with pytest.raises(ConfigError, match=r"lack tasks of the base mixture: \['game24'\]"):
        plan_curriculum({"sorting": 0.5}, base)
    with pytest.raises(ConfigError, match=r"pass_rates.sorting: pass rate must be in \[0, 1\], got 1.5"):
        plan_curriculum({"sorting": 1.5})
    with pytest.raises(ConfigError, match="always or never solved"):
        plan_curriculum({"sorting": 1.0, "game24": 0.0})
    with pytest.raises(ConfigError, match="num_stages"):
        plan_curriculum(PASS_RATES, config=CurriculumConfig(num_stages=0))
    file = tmp_path / "rates.json"
    file.write_text('{\n  "sorting": 0.5,\n  "game24": oops\n}')
    with pytest.raises(ConfigError, match=r"rates.json:3:\d+: invalid JSON"):
        load_pass_rates(file)


def test_pass_rate_layouts(tmp_path):
    file = tmp_path / "rates.json"
    write_pass_rates(file, {"sorting": 0.25})
    assert load_pass_rates(file) == {"sorting": 0.25}
    file.write_text(json.dumps({"sorting": {"correct": 3, "total": 4}, "game24": {"pass_rate": 0.5}, "x": 1}))
    assert load_pass_rates(file) == {"sorting": 0.75, "game24": 0.5, "x": 1.0}


def test_cli_writes_stage_files(tmp_path, capsys):
    rates = tmp_path / "rates.json"
    write_pass_rates(rates, PASS_RATES)
    out = tmp_path / "stages"
    code = main(
        [
            "curriculum",
            "--pass-rates", str(rates),
            "--out-dir", str(out),
            "--mixture", str(CONFIGS / "synthetic_mixture.yaml"),
            "--config", str(CONFIGS / "default.yaml"),
            "--num-stages", "2",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["curriculum.json", "stage_1.yaml", "stage_2.yaml"]
    stage_1 = load_mixture(out / "stage_1.yaml")
    assert [s.task for s in stage_1.tasks] == ["multiplication", "sorting", "letter_count"]
    assert stage_1.tasks[0].options == {"digits_a": 3, "digits_b": 2}
    assert "left out (no potential): game24" in capsys.readouterr().out
    assert main(["curriculum", "--pass-rates", str(rates), "--out-dir", str(out), "--num-stages", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["curriculum.json", "stage_1.yaml"]  # no stale stage_2


def test_cli_reports_bad_input(tmp_path, capsys):
    rates = tmp_path / "rates.json"
    rates.write_text('{"multiplicaton": 0.5}')
    assert main(["curriculum", "--pass-rates", str(rates), "--out-dir", str(tmp_path / "o")]) == 2
    assert "did you mean 'multiplication'" in capsys.readouterr().err
