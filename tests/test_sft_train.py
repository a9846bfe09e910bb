"""SFT training: packed rows attend within their own segment only, the loss counts only
assistant tokens (prompt and tool output ignored), and `r1ci sft` runs, evaluates,
checkpoints and resumes exactly."""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from r1ci_jax.models.qwen2 import Qwen2Config, forward
from r1ci_jax.sft.forward import packed_token_logprobs
from r1ci_jax.sft.packing import build_rows
from r1ci_jax.sft.tokenize import tokenize_conversation
from r1ci_jax.sft.train_step import sft_loss
from r1ci_jax.train.model import random_host_params
from test_sft_data import conversation, make_tokenizer

CONFIG = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, rope_theta=10000.0)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(jnp.asarray, random_host_params(CONFIG, 1))  # no slow init compile


def direct_logprobs(params, ids):
    """Each conversation alone through the plain model: [n] logprobs, 0 at position 0."""
    logits = forward(params, CONFIG, jnp.asarray(ids)[None])[0][0]
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:-1]), jnp.asarray(ids)[1:, None], axis=-1)[:, 0]
    return np.concatenate([[0.0], np.asarray(lp)])


def test_packed_rows_equal_separate_sequences_and_loss_counts_only_assistant_tokens(tokenizer, params):
    examples = [tokenize_conversation(tokenizer, conversation(a, b)) for a, b in ((3, 4), (12, 5), (7, 9))]
    total = sum(len(ids) for ids, _ in examples)
    rows = build_rows(examples, seq_len=total + 5, pad_id=0, packing=True)
    assert rows["tokens"].shape[0] == 1 and rows["segment_ids"].max() == 3
    lp = np.asarray(jax.jit(packed_token_logprobs, static_argnums=(1, 5))(
        params, CONFIG, rows["tokens"], rows["segment_ids"], rows["positions"], 16))[0]
    at = 0
    expected_nll, count = 0.0, 0
    for ids, mask in examples:
        direct = direct_logprobs(params, ids)
        np.testing.assert_allclose(lp[at:at + len(ids)], direct, atol=2e-5, rtol=1e-5)
        expected_nll -= (direct * mask).sum()
        count += mask.sum()
        at += len(ids)
    assert np.all(lp[at:] == 0)
    loss, metrics = sft_loss(params, CONFIG, {k: jnp.asarray(v) for k, v in rows.items()}, chunk_size=16)
    np.testing.assert_allclose(loss, expected_nll / count, rtol=1e-5)
    assert metrics["loss_tokens"] == count

    # Only assistant tokens carry gradient to the per-token logprobs.
    grad = jax.grad(lambda lp: -jnp.sum(lp * rows["loss_mask"]) / count)(jnp.asarray(lp[None]))[0]
    ids_all = rows["tokens"][0]
    untrained_text = tokenizer.decode(ids_all[np.asarray(grad) == 0].tolist())
    assert "Code Execution Results" in untrained_text and "What is 3 * 4?" in untrained_text
    assert "The product is" not in untrained_text and "print(" not in untrained_text


def write_jsonl(path, pairs):
    path.write_text("".join(json.dumps({"messages": conversation(a, b)}) + "\n" for a, b in pairs))


def sft_config(tmp_path, tokenizer_dir):
    return {
        "model": {"architecture": {**{k: getattr(CONFIG, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                                       "num_layers", "num_heads", "num_kv_heads",
                                                                       "rope_theta")}},
                  "compute_dtype": "float32", "param_dtype": "float32", "tokenizer": str(tokenizer_dir)},
        "data": {"train_file": str(tmp_path / "train.jsonl"), "eval_file": str(tmp_path / "eval.jsonl"),
                 "seq_len": 96, "batch_size": 8, "micro_batch_size": 4, "packing": True},
        "mesh": {"mesh": {"data": 2, "fsdp": 2, "tensor": 2}},
        "optimizer": {"learning_rate": 3e-3, "warmup_steps": 1},
        "loop": {"output_dir": str(tmp_path / "run"), "total_steps": 6, "checkpoint_every": 3, "eval_every": 3,
                 "export_hf": False, "progress": False},
        "logprob_chunk": 32,
    }


def test_sft_cli_trains_evaluates_and_resumes_exactly(tmp_path, tokenizer):
    from r1ci_jax.cli import main
    from r1ci_jax.train.metrics import read_metrics
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    rng = np.random.default_rng(0)
    write_jsonl(tmp_path / "train.jsonl", rng.integers(1, 99, (40, 2)).tolist())
    write_jsonl(tmp_path / "eval.jsonl", rng.integers(1, 99, (6, 2)).tolist())
    config_path = tmp_path / "sft.yaml"
    config_path.write_text(yaml.safe_dump(sft_config(tmp_path, tmp_path / "tok")))

    assert main(["sft", "--config", str(config_path)]) == 0
    run = tmp_path / "run"
    train = read_metrics(run / "metrics.jsonl")
    evals = read_metrics(run / "metrics.jsonl", split="eval")
    assert [r["step"] for r in train] == list(range(1, 7)) and [r["step"] for r in evals] == [3, 6]
    assert evals[1]["loss"] < evals[0]["loss"] and train[-1]["loss"] < train[0]["loss"]
    assert all(r["loss_tokens"] > 0 for r in train)

    # Pretend the run died after step 3: drop the later checkpoint, resume, compare.
    shutil.rmtree(run / "checkpoints" / "6")
    assert main(["sft", "--config", str(config_path), "--resume"]) == 0
    resumed = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in train]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in train]
