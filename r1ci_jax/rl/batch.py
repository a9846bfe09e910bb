"""The episode batch the rollout hands to the GRPO trainer.

One row per episode (prompt + sampled tokens + tool-output tokens, right-padded):

    tokens          int32[B, T]  every token of the episode
    attention_mask  int32[B, T]  1 on real tokens, 0 on padding
    loss_mask       f32[B, T]    1 exactly where the policy sampled the token; 0 on the
                                 prompt, on tool output and on padding. The logprob of
                                 token t is predicted from position t - 1, so
                                 loss_mask[:, 0] is always 0.
    old_logprobs    f32[B, T]    behaviour logprobs of the sampled tokens, 0 elsewhere
    rewards         f32[B]       scalar reward of each episode
    group_ids       int32[B]     episodes sampled from the same prompt share an id

Arrays are host numpy arrays of this process's rows; `EpisodeBatch` is a pytree, so
`jax.tree.map` and `sharding.host_batch_to_global` apply to it directly.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

_FIELDS_2D = ("tokens", "attention_mask", "loss_mask", "old_logprobs")
_DTYPES = {"tokens": np.int32, "attention_mask": np.int32, "loss_mask": np.float32,
           "old_logprobs": np.float32, "rewards": np.float32, "group_ids": np.int32}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EpisodeBatch:
    tokens: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    old_logprobs: np.ndarray
    rewards: np.ndarray
    group_ids: np.ndarray

    @classmethod
    def from_arrays(cls, **arrays: np.ndarray) -> "EpisodeBatch":
        """Build with each field cast to its contract dtype, then `validate()`."""
        missing = sorted(set(_DTYPES) - set(arrays))
        unknown = sorted(set(arrays) - set(_DTYPES))
        if missing or unknown:
            raise ValueError(f"EpisodeBatch: missing field(s) {missing}, unknown field(s) {unknown}")
        batch = cls(**{k: np.asarray(v, dtype=_DTYPES[k]) for k, v in arrays.items()})
        batch.validate()
        return batch

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    def num_sampled_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def num_real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def validate(self, where: str = "EpisodeBatch") -> None:
        """Check shapes, dtypes and the mask contract; errors say which rule and rows broke.

        A mask that is inverted or covers tool output shows up as loss_mask outside
        the real tokens, at position 0, or behaviour logprobs where loss_mask is 0.
        """
        if self.tokens.ndim != 2:
            raise ValueError(f"{where}: tokens must be [B, T], got shape {self.tokens.shape}")
        B, T = self.tokens.shape
        for name in _FIELDS_2D:
            arr = getattr(self, name)
            if arr.shape != (B, T):
                raise ValueError(f"{where}: {name} has shape {arr.shape}, expected {(B, T)} like tokens")
        for name in ("rewards", "group_ids"):
            arr = getattr(self, name)
            if arr.shape != (B,):
                raise ValueError(f"{where}: {name} has shape {arr.shape}, expected {(B,)}")
        for name, dtype in _DTYPES.items():
            if getattr(self, name).dtype != dtype:
                raise ValueError(f"{where}: {name} has dtype {getattr(self, name).dtype}, expected "
                                 f"{np.dtype(dtype).name} (use EpisodeBatch.from_arrays to cast)")
        if not np.isin(self.attention_mask, (0, 1)).all() or not np.isin(self.loss_mask, (0.0, 1.0)).all():
            raise ValueError(f"{where}: attention_mask and loss_mask must hold only 0 and 1")
        outside = (self.loss_mask > 0) & (self.attention_mask == 0)
        if outside.any():
            raise ValueError(f"{where}: loss_mask is 1 on padding in row(s) {_rows(outside)}")
        if T and (self.loss_mask[:, 0] > 0).any():
            raise ValueError(f"{where}: loss_mask[:, 0] must be 0 (token 0 has no prediction); "
                             f"rows {_rows(self.loss_mask[:, :1] > 0)}")
        stray = (self.old_logprobs != 0) & (self.loss_mask == 0)
        if stray.any():
            raise ValueError(f"{where}: old_logprobs nonzero where loss_mask is 0 in row(s) {_rows(stray)}: "
                             "is the loss mask inverted or missing on sampled tokens?")
        if (self.old_logprobs > 0).any() or not np.isfinite(self.old_logprobs).all():
            raise ValueError(f"{where}: old_logprobs must be finite and <= 0")
        if not np.isfinite(self.rewards).all():
            raise ValueError(f"{where}: rewards must be finite, rows {np.flatnonzero(~np.isfinite(self.rewards))[:8]}")
        empty = self.loss_mask.sum(axis=1) == 0
        if empty.any():
            raise ValueError(f"{where}: row(s) {np.flatnonzero(empty)[:8].tolist()} have no sampled token "
                             "(loss_mask all 0)")

    def pad_to(self, length: int, pad_id: int = 0) -> "EpisodeBatch":
        """Right-pad every [B, T] field to `length` (tokens with pad_id, the rest with 0)."""
        if length < self.length:
            raise ValueError(f"EpisodeBatch.pad_to({length}): batch is already {self.length} long")
        extra = length - self.length

        def pad(arr: np.ndarray, value: float) -> np.ndarray:
            return np.pad(arr, ((0, 0), (0, extra)), constant_values=value)

        return dataclasses.replace(self, tokens=pad(self.tokens, pad_id), attention_mask=pad(self.attention_mask, 0),
                                   loss_mask=pad(self.loss_mask, 0), old_logprobs=pad(self.old_logprobs, 0))

    def pad_to_multiple(self, multiple: int, pad_id: int = 0) -> "EpisodeBatch":
        """Pad T up to a multiple of `multiple`, so step shapes (and compiles) repeat."""
        return self.pad_to(-(-self.length // multiple) * multiple, pad_id)

    def take(self, rows: Sequence[int] | np.ndarray) -> "EpisodeBatch":
        return jax.tree.map(lambda x: x[np.asarray(rows)], self)

    @staticmethod
    def concatenate(batches: Sequence["EpisodeBatch"], pad_id: int = 0) -> "EpisodeBatch":
        """Stack rows of several batches (padded to the longest)."""
        if not batches:
            raise ValueError("EpisodeBatch.concatenate: no batches")
        length = max(b.length for b in batches)
        padded = [b.pad_to(length, pad_id) for b in batches]
        return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *padded)


def _rows(flags: np.ndarray) -> list[int]:
    return np.flatnonzero(flags.reshape(flags.shape[0], -1).any(axis=1))[:8].tolist()
