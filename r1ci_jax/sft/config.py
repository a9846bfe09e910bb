"""SFT run configuration (YAML via r1ci_jax.config.from_yaml(SFTConfig, path))."""
from __future__ import annotations

import dataclasses

from r1ci_jax.config import ConfigError
from r1ci_jax.sharding import ShardingConfig
from r1ci_jax.train.loop import LoopConfig
from r1ci_jax.train.model import ModelSpec
from r1ci_jax.train.optim import OptimizerConfig


@dataclasses.dataclass
class SFTDataConfig:
    train_file: str                      # jsonl of {"messages": [...]}
    eval_file: str | None = None         # held-out jsonl; its loss is logged every loop.eval_every steps
    seq_len: int = 8192
    packing: bool = True                 # several conversations per row (attention kept apart)
    batch_size: int = 32                 # rows per optimizer update (global)
    micro_batch_size: int = 8            # rows per forward/backward pass (global)
    seed: int = 0                        # epoch shuffles
    end_of_turn: str | None = "<|im_end|>"   # trained on after each assistant turn; None: not
    pad_id: int | None = None            # default: the tokenizer's pad (or EOS) id

    def check(self, where: str = "data") -> None:
        for name in ("seq_len", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"{where}: batch_size={self.batch_size} is not a multiple of "
                              f"micro_batch_size={self.micro_batch_size}")


@dataclasses.dataclass
class SFTConfig:
    model: ModelSpec
    data: SFTDataConfig
    mesh: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=lambda: OptimizerConfig(learning_rate=1e-5))
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    logprob_chunk: int = 256

    def check(self) -> None:
        self.model.check()
        self.data.check()
        self.loop.check()
