"""SamplerState (the resumable decoding state) and GenerationOutput (one row's result)."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from r1ci_jax.sampling.params import SamplingParams

# Device finish codes (decode loop) -> reasons reported to users.
FINISH_NONE, FINISH_EOS, FINISH_STOP, FINISH_LENGTH = 0, 1, 2, 3
FINISH_REASONS = {FINISH_EOS: "eos", FINISH_STOP: "stop", FINISH_LENGTH: "length"}


@dataclasses.dataclass(frozen=True)
class SamplerState:
    """Everything needed to go on decoding a batch, as a pytree.

    Invariant: row b's KV cache holds its whole context except the last token,
    `pending[b]`, which the next decode step feeds (and which `continue_` feeds
    ahead of appended tokens). So the cache never holds a token whose logits were
    not needed, and cutting a row back at a stop string is a length change.

    Data (pytree leaves):
      cache: {"k", "v": [L, B, S, K, Dh], "lengths": int32[B]} on device.
      rng: the PRNG key the next decode chunk splits.
      pending: int32[B] (host) last token of each row, not yet in the cache.
      done: bool[B] (host) rows that do not decode: finished, or paused until
          `continue_` appends to them.
      segment_tokens: int32[B] (host) tokens generated since the row was last
          (re)activated: the `max_new_tokens` budget.
    Static (aux data):
      sampling: the SamplingParams in force.
      finish_reasons / stop_reasons: per row, why it last stopped ("eos", "stop",
          "length", or None while unfinished) and the stop string or token id.
      segment_ids: per row, the ids generated since (re)activation (stop strings
          are searched in their text).
      prompt_tokens / appended_tokens / decoded_tokens: tokens run through the
          model by prefill, by appends, by decode steps (for the whole batch), so
          a test can prove a resume did not re-run the prefill.

    A state is consumed by the call it is passed to (its cache buffers are donated);
    use the returned one.
    """
    cache: dict[str, jax.Array]
    rng: jax.Array
    pending: np.ndarray
    done: np.ndarray
    segment_tokens: np.ndarray
    sampling: SamplingParams
    finish_reasons: tuple[str | None, ...]
    stop_reasons: tuple[str | int | None, ...]
    segment_ids: tuple[tuple[int, ...], ...]
    prompt_tokens: int = 0
    appended_tokens: int = 0
    decoded_tokens: int = 0

    @property
    def batch_size(self) -> int:
        return int(self.pending.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """int32[B]: tokens of context per row (cache + the pending token)."""
        return np.asarray(jax.device_get(self.cache["lengths"])) + 1

    def replace(self, **changes: Any) -> "SamplerState":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    SamplerState,
    data_fields=["cache", "rng", "pending", "done", "segment_tokens"],
    meta_fields=["sampling", "finish_reasons", "stop_reasons", "segment_ids",
                 "prompt_tokens", "appended_tokens", "decoded_tokens"],
)


@dataclasses.dataclass
class GenerationOutput:
    """One row's result of a Sampler call: what it generated during that call.

    token_ids: new token ids (including a final EOS / stop token id, and the whole
        token in which a stop string ended).
    text: their decoded text (None without a tokenizer), cut right after a stop
        string; special tokens (EOS) are skipped.
    logprobs: per token, log-prob under softmax(logits / temperature) over the full
        vocab (None unless return_logprobs).
    finish_reason: "eos", "stop" (stop string or stop token id), "length", or None
        if the row did not finish in this call (max_steps) or was paused.
    stop_reason: the stop string or stop token id that ended the row, else None.
    """
    token_ids: list[int]
    text: str | None
    logprobs: list[float] | None
    finish_reason: str | None
    stop_reason: str | int | None = None
