"""The default prompt source: the Grain prompt pipeline of r1ci_jax.data.pipeline.

Config:
    prompts:
      factory: r1ci_jax.rl.prompts:grain_prompts
      options: {mixture_file: configs/curriculum/..., split: train, seed: 0, ...}   # DataConfig fields

prompts_per_batch and group_size come from the GRPO `batch` section (giving them
here too is an error if they differ).
"""
from __future__ import annotations

from r1ci_jax.config import ConfigError, from_dict
from r1ci_jax.rl.interfaces import PluginContext, PromptSource


def grain_prompts(ctx: PluginContext) -> PromptSource:
    from r1ci_jax.data.pipeline import DataConfig, build_prompt_dataset

    batch = ctx.config.batch
    options = dict(ctx.options)
    for key, value in (("prompts_per_batch", batch.prompts_per_step), ("group_size", batch.group_size)):
        if key in options and options[key] != value:
            raise ConfigError(f"prompts.options.{key}={options[key]} disagrees with the batch section ({value})")
        options[key] = value
    data_config = from_dict(DataConfig, options, where="prompts.options")
    return iter(build_prompt_dataset(data_config, ctx.tokenizer))
