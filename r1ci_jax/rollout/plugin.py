"""The real rollout for `r1ci grpo`: Sampler + CodeExecutor behind the loop's RolloutFn.

    rollout:
      factory: r1ci_jax.rollout:make_rollout
      options: {max_code_calls: 8, max_total_tokens: 1024, max_len: 2048, num_workers: 8, eval_n: 64}

The executor lives on its own asyncio event loop in a background thread for the whole
run (its warm workers are forked once); each training step submits one rollout
coroutine to it and waits. Params go to the sampler as they are (on device).
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import jax
import numpy as np

from r1ci_jax.config import from_dict
from r1ci_jax.rl.interfaces import PluginContext, RLPlugins
from r1ci_jax.rollout.episode import episodes_to_batch
from r1ci_jax.rollout.orchestrator import RolloutConfig, run_rollout


@dataclasses.dataclass
class RolloutOptions:
    """`rollout.options` of a GRPO config. `rollout` fields go to RolloutConfig."""
    max_len: int = 2048                 # KV-cache length per row (prompt + response)
    num_workers: int = 8                # executor processes
    memory_mb: int = 1024
    eval_n: int = 0                     # held-out examples per task at each eval (0 = no eval)
    eval_modes: tuple[str, ...] = ("code",)
    system_prompt: str = "short"
    rollout: dict[str, Any] = dataclasses.field(default_factory=dict)


class _AsyncRunner:
    """An event loop in a daemon thread, for running coroutines from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="r1ci-rollout-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def _batch_shards(mesh: Any, rules: Any) -> int:
    """How many ways the sampler's batch is split: rows must come in multiples of it."""
    if mesh is None:
        return 1
    from r1ci_jax.sharding import batch_sharding
    spec = batch_sharding(mesh, 1, rules).spec[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def make_rollout(ctx: PluginContext) -> RLPlugins:
    from r1ci_jax.data.mixture import build_tasks
    from r1ci_jax.data.pipeline import DataConfig, resolve_mixture
    from r1ci_jax.executor import CodeExecutor
    from r1ci_jax.sampling import Sampler

    options = from_dict(RolloutOptions, dict(ctx.options), where="rollout.options")
    if ctx.tokenizer is None:
        raise ValueError("rollout: the model directory has no tokenizer; the rollout needs one")
    rollout_config = from_dict(RolloutConfig, {**options.rollout, "temperature": ctx.config.loss.temperature},
                               where="rollout.options.rollout")
    prompt_options = {k: v for k, v in ctx.config.prompts.options.items()
                      if k in {f.name for f in dataclasses.fields(DataConfig)}}
    tasks = build_tasks(resolve_mixture(from_dict(DataConfig, prompt_options, where="prompts.options")))
    runner = _AsyncRunner()
    executor = CodeExecutor(num_workers=options.num_workers, timeout_s=rollout_config.exec_timeout_s,
                            memory_mb=options.memory_mb)
    runner.run(executor.start())
    holder: dict[str, Any] = {}

    def sampler_for(params: Any) -> Any:
        if "sampler" not in holder:
            holder["sampler"] = Sampler(params, ctx.model_config, ctx.tokenizer, mesh=ctx.mesh, max_len=options.max_len,
                                        rules=ctx.config.mesh.rules)
        return holder["sampler"]

    def rollout(params: Any, prompts: dict[str, Any], rng: jax.Array):
        ids, mask = np.asarray(prompts["input_ids"]), np.asarray(prompts["attention_mask"]).astype(bool)
        prompt_ids = [row[m].tolist() for row, m in zip(ids, mask)]
        examples = prompts["examples"]
        scorers = [lambda a, e=e: tasks[e.task].score(a, e) for e in examples]
        seed = int(np.asarray(jax.random.key_data(rng) if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
                              else rng).ravel()[-1]) % (2**31)
        config = dataclasses.replace(rollout_config, seed=seed)
        result = runner.run(run_rollout(sampler_for(params), executor, prompt_ids, scorers, config,
                                        group_ids=np.asarray(prompts["group_ids"]).tolist(), params=params))
        tool_logprobs = None
        if not config.mask_tool_tokens:
            from r1ci_jax.rl.logprobs import token_logprobs_jit
            full = episodes_to_batch(result.episodes)
            tool_logprobs = np.asarray(token_logprobs_jit(params, ctx.model_config, full.tokens, full.attention_mask,
                                                          config.temperature))
        batch = episodes_to_batch(result.episodes, pad_id=ctx.config.batch.pad_id,
                                  mask_tool_tokens=config.mask_tool_tokens, tool_logprobs=tool_logprobs)
        return batch, result.metrics

    def evaluate(params: Any, rng: jax.Array, step: int) -> dict[str, float]:
        from r1ci_jax.rollout.evaluate import evaluate_tasks
        scores = runner.run(evaluate_tasks(sampler_for(params), executor, tasks, modes=options.eval_modes,
                                           n=options.eval_n, system_prompt=options.system_prompt,
                                           max_total_tokens=rollout_config.max_total_tokens,
                                           max_code_calls=rollout_config.max_code_calls,
                                           exec_timeout_s=rollout_config.exec_timeout_s, params=params,
                                           batch_multiple=_batch_shards(ctx.mesh, ctx.config.mesh.rules)))
        return {f"{s.task}/{s.mode}_accuracy": s.accuracy for s in scores}

    def close() -> None:
        runner.run(executor.close())
        runner.stop()

    return RLPlugins(rollout=rollout, evaluate=evaluate if options.eval_n > 0 else None, close=close)
