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
    roles = [[m["role"] for m in json.loads(line)["messages"]] for line in lines]
    assert ["user", "assistant"] in roles  # letter_count's direct answers
    with_code = [json.loads(line)["messages"] for line, r in zip(lines, roles) if len(r) == 4]
    assert with_code and all(r in (["user", "assistant"], ["user", "assistant", "tool", "assistant"]) for r in roles)
    assert with_code[0][2]["content"].startswith("Code Execution Results:")


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


def test_direct_share_of_sft_trajectories_answers_without_code():
    """A task's `direct_share` of the trajectories state the gold answer with no code turn; the
    rest run the program and read the answer from its output."""
    import asyncio
    import contextlib
    import io

    import pytest

    from r1ci_jax.demo.config import DemoTask
    from r1ci_jax.demo.pipeline import build_tasks, make_trajectories

    class InProcessExecutor:  # the canonical programs are plain prints: exec them here
        async def run(self, code):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(code, {})
            return type("Result", (), {"status": "ok", "stdout": out.getvalue(), "stderr": ""})()

    cfg = DemoConfig(tasks=[DemoTask("multiplication", {"digits_a": 2, "digits_b": 2}, direct_share=0.3)],
                     sft_examples_per_task=400)
    conversations = asyncio.run(make_trajectories(cfg, build_tasks(cfg), InProcessExecutor()))
    direct = [c for c in conversations if len(c) == 2]
    with_code = [c for c in conversations if len(c) == 4]
    assert len(direct) + len(with_code) == 400
    assert 0.22 < len(direct) / 400 < 0.38
    for c in direct:
        a, b = (int(x) for x in c[0]["content"].rstrip(".").split("Compute ")[1].split(" * "))
        assert c[1] == {"role": "assistant", "content": f"<<<{a * b}>>>"}
    assert all(c[1]["content"].startswith("```python") and c[2]["role"] == "tool" for c in with_code)
    bad = DemoConfig(tasks=[DemoTask("multiplication", {"digits_a": 2, "digits_b": 2}, direct_share=1.0)])
    with pytest.raises(ValueError, match=r"tasks\[multiplication\].direct_share=1.0"):
        asyncio.run(make_trajectories(bad, build_tasks(bad), InProcessExecutor()))
