"""Multi-turn rollouts: the sampler and the sandboxed executor joined, with token-exact masks.

    from r1ci_jax.rollout import RolloutConfig, run_rollout, episodes_to_batch
    result = await run_rollout(sampler, executor, prompt_ids, scorers, RolloutConfig())
    batch = episodes_to_batch(result.episodes)      # -> rl.batch.EpisodeBatch

`make_rollout` is the GRPO loop's plugin factory (`rollout.factory` in a config).
"""
from r1ci_jax.rollout.episode import Episode, episodes_to_batch
from r1ci_jax.rollout.orchestrator import RolloutConfig, RolloutResult, run_rollout
from r1ci_jax.rollout.plugin import make_rollout

__all__ = ["Episode", "RolloutConfig", "RolloutResult", "episodes_to_batch", "make_rollout", "run_rollout"]
