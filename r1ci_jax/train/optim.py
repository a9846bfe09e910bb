"""AdamW with linear warmup, cosine decay and global-norm clipping (optax)."""
from __future__ import annotations

import dataclasses

import jax
import optax

from r1ci_jax.config import ConfigError


@dataclasses.dataclass
class OptimizerConfig:
    learning_rate: float = 1e-6
    warmup_steps: int = 0            # optimizer updates of linear warmup from 0
    decay: str = "cosine"            # cosine | constant (after warmup)
    min_lr_ratio: float = 0.0        # cosine floor, as a fraction of learning_rate
    total_steps: int | None = None   # optimizer updates the cosine spans; None: the whole run
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0   # None: no clipping


def make_schedule(config: OptimizerConfig, total_updates: int) -> optax.Schedule:
    """lr(update): 0 -> lr over warmup_steps, then cosine down to min_lr_ratio * lr (or constant)."""
    lr = config.learning_rate
    total = config.total_steps or total_updates
    if lr < 0 or config.warmup_steps < 0 or total < 1:
        raise ConfigError(f"optimizer: need learning_rate >= 0, warmup_steps >= 0 and total steps >= 1; got "
                          f"{lr}, {config.warmup_steps}, {total}")
    if config.decay == "constant":
        after = optax.constant_schedule(lr)
    elif config.decay == "cosine":
        after = optax.cosine_decay_schedule(lr, max(total - config.warmup_steps, 1), alpha=config.min_lr_ratio)
    else:
        raise ConfigError(f"optimizer.decay: {config.decay!r} is not one of ['cosine', 'constant']")
    if config.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, lr, config.warmup_steps)
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def make_optimizer(config: OptimizerConfig, total_updates: int) -> tuple[optax.GradientTransformation,
                                                                         optax.Schedule]:
    """(global-norm clip -> AdamW) and its learning-rate schedule.

    Weight decay skips norms and biases (params whose name ends in "norm" or "bias").
    """
    schedule = make_schedule(config, total_updates)
    adamw = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay, mask=decay_mask)
    parts = [adamw] if config.max_grad_norm is None else [optax.clip_by_global_norm(config.max_grad_norm), adamw]
    return optax.chain(*parts), schedule


def decay_mask(params):
    """True for params that get weight decay (matrices), False for norms and biases."""
    def decays(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return not (name.endswith("norm") or name.endswith("bias"))
    return jax.tree_util.tree_map_with_path(decays, params)
