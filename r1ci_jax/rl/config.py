"""GRPO run configuration (YAML via r1ci_jax.config.from_yaml(GRPOConfig, path)).

Defaults are the R1-Code-Interpreter paper's GRPO settings: 5 samples per prompt,
512 prompts per step, mini-batches of 256 prompts (two optimizer updates per step),
lr 1e-6, clip 0.2, k3 KL coefficient 0.001 clamped to +-10, entropy coefficient
0.001, token-mean loss.
"""
from __future__ import annotations

import dataclasses

from r1ci_jax.config import ConfigError
from r1ci_jax.rl.grpo import LOSS_AGGS
from r1ci_jax.sharding import ShardingConfig
from r1ci_jax.train.loop import LoopConfig, PluginConfig
from r1ci_jax.train.model import ModelSpec
from r1ci_jax.train.optim import OptimizerConfig


@dataclasses.dataclass
class GRPOLossConfig:
    clip_eps: float = 0.2
    clip_eps_high: float | None = None   # DAPO clip-higher (e.g. 0.28); None = clip_eps
    kl_coef: float = 0.001               # 0: no reference model is kept at all
    kl_clamp: float = 10.0
    entropy_coef: float = 0.001
    loss_agg: str = "token-mean"         # one of rl.grpo.LOSS_AGGS
    norm_length: int | None = None       # Dr.GRPO constant for seq-mean-token-sum-norm; None = padded T
    adv_eps: float = 1e-6
    adv_normalize_std: bool = True       # False: Dr.GRPO's unscaled r - mean
    temperature: float = 1.0             # must equal the sampler's temperature
    logprob_chunk: int = 256             # positions per vocab-projection chunk

    def check(self, where: str = "loss") -> None:
        if self.loss_agg not in LOSS_AGGS:
            raise ConfigError(f"{where}.loss_agg: {self.loss_agg!r} is not one of {list(LOSS_AGGS)}")
        if self.clip_eps <= 0 or (self.clip_eps_high is not None and self.clip_eps_high <= 0):
            raise ConfigError(f"{where}: clip_eps / clip_eps_high must be > 0")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature must be > 0, got {self.temperature}")
        if self.kl_coef < 0 or self.entropy_coef < 0:
            raise ConfigError(f"{where}: kl_coef and entropy_coef must be >= 0")


@dataclasses.dataclass
class GRPOBatchConfig:
    prompts_per_step: int = 512        # global, over all hosts
    group_size: int = 5                # episodes sampled per prompt
    mini_batch_prompts: int = 256      # prompts per optimizer update
    micro_batch_size: int = 8          # episodes per forward/backward pass (global)
    pad_multiple: int = 128            # episode length is padded up to a multiple (fewer recompiles)
    max_length: int = 16384            # episodes longer than this are an error
    pad_id: int = 0
    recompute_old_logprobs: bool = True  # recompute behaviour logprobs with the trainer (as verl does)

    @property
    def episodes_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def num_mini_batches(self) -> int:
        return self.prompts_per_step // self.mini_batch_prompts

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per optimizer update."""
        return self.mini_batch_prompts * self.group_size // self.micro_batch_size

    def check(self, where: str = "batch") -> None:
        for name in ("prompts_per_step", "group_size", "mini_batch_prompts", "micro_batch_size", "pad_multiple"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if self.prompts_per_step % self.mini_batch_prompts:
            raise ConfigError(f"{where}: prompts_per_step={self.prompts_per_step} is not a multiple of "
                              f"mini_batch_prompts={self.mini_batch_prompts}")
        mini = self.mini_batch_prompts * self.group_size
        if mini % self.micro_batch_size:
            raise ConfigError(f"{where}: a mini-batch of {mini} episodes (mini_batch_prompts x group_size) is not "
                              f"a multiple of micro_batch_size={self.micro_batch_size}")


@dataclasses.dataclass
class GRPOConfig:
    model: ModelSpec
    rollout: PluginConfig = dataclasses.field(default_factory=lambda: PluginConfig("r1ci_jax.rollout:make_rollout"))
    prompts: PluginConfig = dataclasses.field(default_factory=lambda: PluginConfig("r1ci_jax.rl.prompts:grain_prompts"))
    mesh: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    loss: GRPOLossConfig = dataclasses.field(default_factory=GRPOLossConfig)
    batch: GRPOBatchConfig = dataclasses.field(default_factory=GRPOBatchConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    sampler_dtype: str | None = None   # dtype of the params handed to the rollout; None = compute dtype

    def check(self) -> None:
        self.model.check()
        self.loss.check()
        self.batch.check()
        self.loop.check()
        if self.sampler_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ConfigError(f"sampler_dtype: {self.sampler_dtype!r} is not float32, bfloat16 or float16")
