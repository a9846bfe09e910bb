"""The demo pipeline end to end at toy scale (every phase real, nothing expected to be learned)."""
import json
from pathlib import Path

from r1ci_jax import cli
from r1ci_jax.config import from_yaml
from r1ci_jax.demo.config import DemoConfig


def test_demo_pipeline_at_toy_scale(tmp_path, capsys):
    rc = cli.main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "SFT code" in out and "GRPO text" in out and "average" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["average"]) == {"SFT", "GRPO"}
    assert set(report["average"]["GRPO"]) == {"text", "code"}
    assert report["export"]["max_abs_logit_diff_vs_transformers"] < 1e-3
    assert len(report["reward_curve"]) == 1
    assert (tmp_path / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "grpo" / "hf" / "tokenizer.json").is_file()
    lines = (tmp_path / "sft.jsonl").read_text().splitlines()
    first = json.loads(lines[0])["messages"]
    assert [m["role"] for m in first] == ["user", "assistant", "tool", "assistant"]
    assert first[2]["content"].startswith("Code Execution Results:")


def test_shipped_demo_yaml_is_the_default():
    path = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert from_yaml(DemoConfig, path) == DemoConfig()
