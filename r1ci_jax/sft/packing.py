"""Fixed-shape SFT rows from tokenized conversations, and a resumable batch iterator.

A row (length T) holds one conversation (padding) or several back to back (packing):
    tokens      int32[T]
    loss_mask   f32[T]    1 on assistant tokens (see sft.tokenize)
    segment_ids int32[T]  1, 2, ... per conversation in the row; 0 on padding
    positions   int32[T]  position inside the conversation (RoPE restarts per segment)
Attention never crosses segments (sft.forward), so packing changes no token's loss.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

Example = tuple[np.ndarray, np.ndarray]  # (ids int32[n], loss_mask int32[n])


def truncate(examples: Sequence[Example], seq_len: int) -> tuple[list[Example], int]:
    """Cut conversations longer than seq_len; returns (examples, number cut)."""
    out, cut = [], 0
    for ids, mask in examples:
        if len(ids) > seq_len:
            ids, mask, cut = ids[:seq_len], mask[:seq_len], cut + 1
        out.append((ids, mask))
    return out, cut


def build_rows(examples: Sequence[Example], seq_len: int, pad_id: int, packing: bool) -> dict[str, np.ndarray]:
    """Rows [R, seq_len] from examples in the given order.

    packing=True: each example goes into the first row with room for it (first-fit in
    the given order), so the layout depends only on the order; False: one per row.
    """
    rows: list[list[Example]] = []
    room: list[int] = []
    for ex in examples:
        n = len(ex[0])
        if n > seq_len:
            raise ValueError(f"example of {n} tokens does not fit seq_len={seq_len}; truncate first")
        slot = next((r for r, free in enumerate(room) if free >= n), None) if packing else None
        if slot is None:
            rows.append([ex])
            room.append(seq_len - n)
        else:
            rows[slot].append(ex)
            room[slot] -= n
    R = len(rows)
    out = {"tokens": np.full((R, seq_len), pad_id, np.int32), "loss_mask": np.zeros((R, seq_len), np.float32),
           "segment_ids": np.zeros((R, seq_len), np.int32), "positions": np.zeros((R, seq_len), np.int32)}
    for r, row in enumerate(rows):
        at = 0
        for seg, (ids, mask) in enumerate(row, 1):
            n = len(ids)
            out["tokens"][r, at:at + n] = ids
            out["loss_mask"][r, at:at + n] = mask
            out["loss_mask"][r, at] = 0.0  # a segment's first token has no prediction
            out["segment_ids"][r, at:at + n] = seg
            out["positions"][r, at:at + n] = np.arange(n)
            at += n
    return out


class SFTBatches:
    """Endless batches of `batch_size` rows: each epoch shuffles the conversations (seed,
    epoch), builds rows, and drops the last partial batch. State = {"epoch", "batch"}:
    JSON-able, and `set_state` on a fresh iterator resumes with the same next batch."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seq_len: int, pad_id: int,
                 packing: bool = True, seed: int = 0, shuffle: bool = True):
        self.examples, self.batch_size, self.seq_len = list(examples), batch_size, seq_len
        self.pad_id, self.packing, self.seed, self.shuffle = pad_id, packing, seed, shuffle
        self.epoch, self.batch = 0, 0
        self._rows: dict[str, np.ndarray] | None = None
        if self.batches_per_epoch(0) == 0:
            raise ValueError(f"{len(self.examples)} conversations make fewer than batch_size={batch_size} rows "
                             f"of {seq_len} tokens")

    def _epoch_rows(self, epoch: int) -> dict[str, np.ndarray]:
        order = np.arange(len(self.examples))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return build_rows([self.examples[i] for i in order], self.seq_len, self.pad_id, self.packing)

    def batches_per_epoch(self, epoch: int) -> int:
        return len(self._epoch_rows(epoch)["tokens"]) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._rows is None:
            self._rows = self._epoch_rows(self.epoch)
        if (self.batch + 1) * self.batch_size > len(self._rows["tokens"]):
            self.epoch, self.batch = self.epoch + 1, 0
            self._rows = self._epoch_rows(self.epoch)
        sl = slice(self.batch * self.batch_size, (self.batch + 1) * self.batch_size)
        self.batch += 1
        return {k: v[sl] for k, v in self._rows.items()}

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._rows = None
