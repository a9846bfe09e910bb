"""The SFT training loop behind `r1ci sft`: batches -> update -> metrics, eval loss and
async checkpoints when due; `resume=True` continues exactly (state + iterator position)."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from r1ci_jax.config import ConfigError, to_dict
from r1ci_jax.sft.config import SFTConfig
from r1ci_jax.sft.packing import SFTBatches, build_rows, truncate
from r1ci_jax.sft.tokenize import tokenize_file
from r1ci_jax.sft.train_step import make_eval_step, make_sft_step
from r1ci_jax.sharding import host_batch_to_global, is_main_process, make_mesh, param_shardings
from r1ci_jax.train.checkpoint import open_run_checkpointer
from r1ci_jax.train.export import export_hf
from r1ci_jax.train.loop import Progress, Stopwatch, due
from r1ci_jax.train.metrics import MetricsWriter
from r1ci_jax.train.model import load_model, load_tokenizer
from r1ci_jax.train.optim import make_optimizer
from r1ci_jax.train.state import restore_or_create_state, state_shardings


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (chat models often define no pad token)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ConfigError("data.pad_id: the tokenizer has neither a pad nor an EOS token; set data.pad_id")


def _local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's contiguous share of a global batch's rows."""
    n, i = jax.process_count(), jax.process_index()
    rows = len(batch["tokens"]) // n
    return {k: v[i * rows:(i + 1) * rows] for k, v in batch.items()}


def run_sft(config: SFTConfig, *, resume: bool = False, tokenizer: Any = None) -> list[dict[str, Any]]:
    """Train; returns the train metrics of the steps run in this call (see run_grpo for resume)."""
    config.check()
    data_cfg, loop_cfg = config.data, config.loop
    with contextlib.ExitStack() as cleanup:
        checkpointer, latest = open_run_checkpointer(loop_cfg, resume, cleanup)
        if tokenizer is None:
            tokenizer = load_tokenizer(config.model)
        if tokenizer is None:
            raise ConfigError("model: SFT needs a tokenizer; set model.tokenizer (or model.path)")
        pad_id = data_cfg.pad_id if data_cfg.pad_id is not None else pad_token_id(tokenizer)
        train_examples, cut = truncate(tokenize_file(tokenizer, data_cfg.train_file, data_cfg.end_of_turn),
                                       data_cfg.seq_len)
        batches = SFTBatches(train_examples, data_cfg.batch_size, data_cfg.seq_len, pad_id, data_cfg.packing,
                             data_cfg.seed)

        mesh = make_mesh(config.mesh.mesh)
        rules = config.mesh.rules
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if data_cfg.micro_batch_size % shards:
            raise ConfigError(f"data.micro_batch_size={data_cfg.micro_batch_size} is not a multiple of the "
                              f"{shards} batch shards (mesh data x fsdp)")
        model_config, params = load_model(config.model, mesh, rules)
        optimizer, schedule = make_optimizer(config.optimizer, loop_cfg.total_steps)
        s_shardings = state_shardings(param_shardings(model_config, mesh, rules), optimizer, params, mesh)
        step_fn = make_sft_step(model_config, optimizer, data_cfg.batch_size // data_cfg.micro_batch_size,
                                config.logprob_chunk, s_shardings)
        eval_rows = _eval_rows(config, tokenizer, pad_id)
        eval_fn = make_eval_step(model_config, config.logprob_chunk) if eval_rows is not None else None

        writer = MetricsWriter(loop_cfg.output_dir, enabled=is_main_process(), tensorboard=loop_cfg.tensorboard)
        cleanup.callback(writer.close)
        state, start = restore_or_create_state(checkpointer, latest, params, optimizer, loop_cfg.seed,
                                               s_shardings, batches, writer)
        del params
        progress = Progress(loop_cfg.total_steps, start, "sft", enabled=loop_cfg.progress and is_main_process())
        cleanup.callback(progress.close)
        if cut:
            progress.write(f"note: {cut} conversation(s) longer than data.seq_len={data_cfg.seq_len} were truncated")

        records: list[dict[str, Any]] = []
        for step in range(start + 1, loop_cfg.total_steps + 1):
            watch = Stopwatch()
            batch = next(batches)
            real_tokens = int((batch["segment_ids"] > 0).sum())
            state, metrics = step_fn(state, host_batch_to_global(_local_rows(batch), mesh, rules))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds = watch.lap()
            record = {**metrics, "lr": float(schedule(step - 1)), "epoch": batches.epoch,
                      "tokens_per_s": real_tokens / max(seconds, 1e-9), "step_s": seconds}
            records.append(record)
            if due(step, loop_cfg.log_every) or step == loop_cfg.total_steps:
                writer.write(step, record)
            progress.update(record, ("loss", "grad_norm", "tokens_per_s"))
            if eval_fn is not None and (due(step, loop_cfg.eval_every) or step == loop_cfg.total_steps):
                eval_loss = _evaluate(eval_fn, state.params, eval_rows, data_cfg.batch_size, mesh, rules)
                writer.write(step, {"loss": eval_loss}, split="eval")
                progress.write(f"step {step} eval loss {eval_loss:.4f}")
            if due(step, loop_cfg.checkpoint_every) or step == loop_cfg.total_steps:
                checkpointer.save(step, state, {"data_state": batches.get_state(), "step": step,
                                                "config": to_dict(config)})
        if loop_cfg.export_hf:
            checkpointer.wait()
            export_hf(state.params, model_config, Path(loop_cfg.output_dir) / "hf", tokenizer)
    return records


def _eval_rows(config: SFTConfig, tokenizer: Any, pad_id: int) -> dict[str, np.ndarray] | None:
    data_cfg = config.data
    if data_cfg.eval_file is None:
        return None
    examples, _ = truncate(tokenize_file(tokenizer, data_cfg.eval_file, data_cfg.end_of_turn), data_cfg.seq_len)
    rows = build_rows(examples, data_cfg.seq_len, pad_id, data_cfg.packing)
    # Pad with empty rows (loss_mask 0) to whole batches: one compiled shape, no row dropped.
    missing = -len(rows["tokens"]) % data_cfg.batch_size
    return {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) for k, v in rows.items()}


def _evaluate(eval_fn: Any, params: Any, rows: dict[str, np.ndarray], batch_size: int, mesh: Any, rules: Any,
              ) -> float:
    total, count = 0.0, 0.0
    for start in range(0, len(rows["tokens"]), batch_size):
        batch = {k: v[start:start + batch_size] for k, v in rows.items()}
        nll, tokens = jax.device_get(eval_fn(params, host_batch_to_global(_local_rows(batch), mesh, rules)))
        total, count = total + float(nll), count + float(tokens)
    return total / count if count else math.nan
