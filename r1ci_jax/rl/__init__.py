"""GRPO for multi-turn code-interpreter episodes.

    batch.py       EpisodeBatch: the rollout -> trainer contract (numpy pytree)
    logprobs.py    token_logprobs(params, config, tokens, attention_mask, temperature)
    grpo.py        group_advantages, grpo_loss, aggregate, LOSS_AGGS
    train_step.py  the jitted, sharded update (old/ref logprobs, mini/micro-batches, AdamW)
    config.py      GRPOConfig (YAML)
    interfaces.py  PromptSource, RolloutFn, RLPlugins, PluginContext: what the loop calls
    prompts.py     the default prompt source (Grain pipeline of r1ci_jax.data)
    loop.py        run_grpo: the `r1ci grpo` loop (rollout, update, eval, checkpoints, resume)
"""
from r1ci_jax.rl.batch import EpisodeBatch
from r1ci_jax.rl.grpo import LOSS_AGGS, GroupError, aggregate, group_advantages, grpo_loss
from r1ci_jax.rl.logprobs import token_logprobs, token_logprobs_and_entropy

__all__ = ["EpisodeBatch", "LOSS_AGGS", "GroupError", "aggregate", "group_advantages", "grpo_loss",
           "token_logprobs", "token_logprobs_and_entropy"]
