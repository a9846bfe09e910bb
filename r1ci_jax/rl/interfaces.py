"""How the GRPO loop talks to the outside: prompt sources, rollouts and evaluation.

    prompts = next(prompt_source)                      # one step's prompt batch (any object)
    episodes = rollout(params, prompts, rng)           # -> EpisodeBatch [, metrics]
    eval_metrics = evaluate(params, rng, step)         # every loop.eval_every steps

`params` are the live training params on the mesh, cast to the sampler dtype on
device: they never leave the accelerators. `rng` is a raw uint32[2] jax PRNG key,
drawn from the checkpointed train state, so a resumed run replays the same rollouts.

A YAML config names factories ("package.module:callable") that build these from a
`PluginContext`:
    rollout.factory(ctx) -> RLPlugins        prompts.factory(ctx) -> PromptSource
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import jax

from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.rl.batch import EpisodeBatch


@runtime_checkable
class PromptSource(Protocol):
    """An endless iterator of prompt batches that can be checkpointed (a Grain
    DatasetIterator is one). Its state must be JSON-able."""

    def __next__(self) -> Any: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


class RolloutFn(Protocol):
    """(params, prompt batch, rng) -> EpisodeBatch of this host's rows, or
    (EpisodeBatch, {name: float}) to log rollout statistics too.

    Rows: prompts_per_step / process_count * group_size episodes; the rows of one
    prompt share its group id, and the ids must be the prompt batch's "group_ids"
    when it has that key. Sample at `loss.temperature`."""

    def __call__(self, params: Any, prompts: Any, rng: jax.Array,
                 ) -> EpisodeBatch | tuple[EpisodeBatch, Mapping[str, float]]: ...


# (params, rng, step) -> metrics logged under split "eval".
EvalFn = Callable[[Any, jax.Array, int], Mapping[str, float]]


@dataclasses.dataclass
class RLPlugins:
    rollout: RolloutFn
    evaluate: EvalFn | None = None
    close: Callable[[], None] | None = None


@dataclasses.dataclass
class PluginContext:
    """What a factory gets: the run config, the model as the rollout sees it, mesh, tokenizer."""
    config: Any                      # GRPOConfig
    model_config: Qwen2Config        # architecture, with dtype/param_dtype of the params passed to rollout
    mesh: Any
    tokenizer: Any | None
    options: dict[str, Any]          # the factory's own `options` from the YAML


def split_rollout_output(out: Any) -> tuple[EpisodeBatch, dict[str, float]]:
    if isinstance(out, EpisodeBatch):
        return out, {}
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], EpisodeBatch):
        return out[0], {str(k): float(v) for k, v in dict(out[1]).items()}
    raise TypeError(f"rollout returned {type(out).__name__}; expected EpisodeBatch or (EpisodeBatch, metrics dict)")
