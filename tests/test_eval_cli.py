"""`r1ci eval` on a tiny checkpoint: the table, the json, and bad input."""
import json

from r1ci_jax import cli
from r1ci_jax.checkpoint.hf import save_hf
from r1ci_jax.models.qwen2 import Qwen2Config, init_params
from r1ci_jax.tokenizer import train_tokenizer


def test_eval_cli_writes_table_and_json(tmp_path, capsys):
    import jax
    tokenizer = train_tokenizer(["Compute 12 * 34.", "```python\nprint(12*34)\n```\n", "<<<408>>>"] * 20,
                                vocab_size=300, extra_tokens=["```python\n", "```\n"])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=1,
                         num_heads=2, num_kv_heads=1, rope_theta=10000.0, eos_token_id=tokenizer.eos_token_id)
    model = save_hf(init_params(config, jax.random.PRNGKey(0)), config, tmp_path / "m")
    tokenizer.save_pretrained(str(model))
    rc = cli.main(["eval", "--model", str(model), "--tasks", "multiplication,letter_count", "--n", "3",
                   "--task-options", '{"multiplication": {"digits_a": 2, "digits_b": 2}}', "--max-total-tokens",
                   "24", "--max-len", "128", "--workers", "2", "--system-prompt", "none", "--out",
                   str(tmp_path / "eval.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "text acc" in out and "code acc" in out and "multiplication" in out and "average" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {(s["task"], s["mode"]) for s in report["scores"]} == {
        (t, m) for t in ("multiplication", "letter_count") for m in ("text", "code")}
    assert all(s["n"] == 3 and 0.0 <= s["accuracy"] <= 1.0 for s in report["scores"])
    assert set(report["average"]) == {"text", "code"}


def test_eval_cli_bad_input(tmp_path, capsys):
    assert cli.main(["eval", "--model", str(tmp_path / "none"), "--tasks", "multiplication"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert cli.main(["eval", "--model", str(tmp_path), "--tasks", "multiplication", "--modes", "chat"]) == 2
    assert "each mode must be 'text' or 'code'" in capsys.readouterr().err
