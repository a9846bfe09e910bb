"""SamplingParams: how to sample, validated on construction."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Decoding settings for one `Sampler` call (frozen and hashable).

    max_new_tokens: tokens a row may generate after it is (re)activated (by `start`
        or by `continue_` appending to it); the row then finishes with "length".
    temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature).
    top_k: keep the k most likely tokens (0 = all).
    top_p: nucleus mass in (0, 1] (1 = all), applied after top_k.
    stop: strings that end a row when its generated text contains one (finish "stop");
        the text is cut right after the first occurrence, which stays in it once.
    stop_token_ids: token ids that end a row (finish "stop"), in addition to EOS.
    seed: seed of the row sampling noise (same seed + inputs = same samples).
    return_logprobs: return each sampled token's log-prob under softmax(logits /
        temperature) over the full vocabulary (raw logits when greedy).
    ignore_eos: keep generating past EOS ids (for benchmarks).
    """
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    seed: int = 0
    return_logprobs: bool = True
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and stored as tuples (hashable).
        if isinstance(self.stop, str):
            raise ValueError(f"stop must be a list of strings, got the string {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = no top-k), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r} in stop={list(self.stop)!r}")
        for t in self.stop_token_ids:
            if not _is_int(t) or t < 0:
                raise ValueError(f"stop_token_ids must be non-negative integers, got {t!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
