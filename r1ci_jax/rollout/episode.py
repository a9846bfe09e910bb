"""Episode: one multi-turn trajectory as token ids actually sampled or appended.

Masks and logprobs are built from these ids as they are produced, never by
re-tokenizing text (which drifts from what the model sampled), so the episode's
`loss_mask` is exactly 1 on model-sampled tokens and 0 on prompt and tool output.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from r1ci_jax.rl.batch import EpisodeBatch


@dataclasses.dataclass
class Episode:
    """One trajectory.

    tokens: prompt + response ids (sampled and appended, in order).
    sampled: per token, True where the policy sampled it (False on prompt and tool output).
    logprobs: per token, the behaviour log-prob of sampled tokens (0 elsewhere).
    """
    prompt_len: int
    tokens: list[int]
    sampled: list[bool]
    logprobs: list[float]
    group_id: int = 0
    code_calls: int = 0
    exec_statuses: list[str] = dataclasses.field(default_factory=list)
    model_text: str = ""          # what the model wrote (answers are read from here only)
    response_text: str = ""       # model text and tool output, as the model saw it
    answer: str | None = None
    reward: float = 0.0
    finish_reason: str | None = None  # "answer", "eos", "length", "max_code_calls", "max_tokens", "stop"

    @classmethod
    def start(cls, prompt_ids: Sequence[int], group_id: int = 0) -> "Episode":
        n = len(prompt_ids)
        return cls(prompt_len=n, tokens=list(prompt_ids), sampled=[False] * n, logprobs=[0.0] * n,
                   group_id=group_id)

    def add_sampled(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        self.tokens.extend(int(t) for t in ids)
        self.sampled.extend([True] * len(ids))
        if logprobs is not None and len(logprobs) != len(ids):
            raise ValueError(f"{len(ids)} sampled tokens but {len(logprobs)} logprobs")
        self.logprobs.extend([0.0] * len(ids) if logprobs is None else [float(x) for x in logprobs])

    def add_appended(self, ids: Sequence[int]) -> None:
        self.tokens.extend(int(t) for t in ids)
        self.sampled.extend([False] * len(ids))
        self.logprobs.extend([0.0] * len(ids))

    @property
    def response_len(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def num_sampled(self) -> int:
        return sum(self.sampled)

    @property
    def num_appended(self) -> int:
        return self.response_len - self.num_sampled


def episodes_to_batch(episodes: Sequence[Episode], pad_to: int | None = None, pad_id: int = 0,
                      mask_tool_tokens: bool = True,
                      tool_logprobs: Sequence[Sequence[float]] | None = None) -> EpisodeBatch:
    """Right-pad episodes into the trainer's `EpisodeBatch`.

    mask_tool_tokens=False puts tool-output tokens in the loss too (the paper's
    unmasked ablation); their behaviour logprobs then come from `tool_logprobs`
    (per episode, per token, e.g. from `rl.logprobs` over the final sequence).
    """
    if not episodes:
        raise ValueError("episodes_to_batch: no episodes")
    T = max(len(e.tokens) for e in episodes)
    if pad_to is not None:
        if pad_to < T:
            raise ValueError(f"episodes_to_batch: pad_to={pad_to} is shorter than the longest episode ({T})")
        T = pad_to
    B = len(episodes)
    tokens = np.full((B, T), pad_id, np.int32)
    attention = np.zeros((B, T), np.int32)
    loss_mask = np.zeros((B, T), np.float32)
    old = np.zeros((B, T), np.float32)
    for i, e in enumerate(episodes):
        n = len(e.tokens)
        tokens[i, :n] = e.tokens
        attention[i, :n] = 1
        sampled = np.asarray(e.sampled, bool)
        loss_mask[i, :n] = sampled
        old[i, :n] = np.where(sampled, e.logprobs, 0.0)
        if not mask_tool_tokens:
            if tool_logprobs is None:
                raise ValueError("episodes_to_batch: mask_tool_tokens=False needs tool_logprobs")
            tool = np.zeros(n, bool)
            tool[e.prompt_len:] = ~sampled[e.prompt_len:]
            loss_mask[i, :n] = np.maximum(loss_mask[i, :n], tool)
            old[i, :n] = np.where(tool, np.asarray(tool_logprobs[i], np.float32)[:n], old[i, :n])
    return EpisodeBatch.from_arrays(
        tokens=tokens, attention_mask=attention, loss_mask=loss_mask, old_logprobs=old,
        rewards=np.array([e.reward for e in episodes], np.float32),
        group_ids=np.array([e.group_id for e in episodes], np.int32))
