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


def test_task_weights_share_the_sft_examples():
    import pytest

    from r1ci_jax.demo.config import DemoTask
    from r1ci_jax.demo.pipeline import sft_example_counts
    cfg = DemoConfig(tasks=[DemoTask("multiplication", {}, 2.0), DemoTask("letter_count", {}, 0.5)],
                     sft_examples_per_task=300)
    assert sft_example_counts(cfg) == {"multiplication": 600, "letter_count": 150}
    with pytest.raises(ValueError, match=r"tasks\[letter_count\].weight=0"):
        sft_example_counts(DemoConfig(tasks=[DemoTask("letter_count", {}, 0.0)]))


def test_demo_tokenizer_keeps_random_strings_one_letter_per_token(tmp_path):
    """Merges must be as common as the task wording: random letter pairs stay unmerged, so
    a string is the same letters, one token each, in the question and in the code."""
    from r1ci_jax.demo.config import DemoTask
    from r1ci_jax.demo.pipeline import train_demo_tokenizer
    from r1ci_jax.tasks import get_task
    from r1ci_jax.tasks.protocol import format_code_block

    task = get_task("letter_count", length=16, alphabet="ABDFGIJKLMNOPQSTUVWXYZ")
    examples = list(task.examples(400, seed=0, split="train"))
    conversations = [task.prompt(e, style="none") + [{"role": "assistant", "content": format_code_block(
        task.solution_code(e))}] for e in examples]
    cfg = DemoConfig(tasks=[DemoTask("letter_count")], vocab_size=384)
    tokenizer = train_demo_tokenizer(cfg, conversations, tmp_path / "tok")
    held_out = next(iter(task.examples(1, seed=5, split="test"))).meta["text"]
    for text in (f"print('{held_out}'.count('A'))", f"appear in: {held_out}?"):
        pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text)]
        start = next(i for i, p in enumerate(pieces) if p and p[-1] == held_out[0] and p.strip() in ("", held_out[0]))
        letters = [p.strip() for p in pieces[start:start + len(held_out)]]
        assert "".join(letters) == held_out and all(len(p) == 1 for p in letters), pieces
    assert len(tokenizer.encode("How many times does the letter")) <= 8  # the wording itself is merged
