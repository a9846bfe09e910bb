"""The Qwen2 model over packed rows: attention restricted to each token's own segment
(`models.qwen2.forward_hidden(..., segment_ids=...)`), and per-token logprobs."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from r1ci_jax.models import qwen2
from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.rl.logprobs import DEFAULT_CHUNK, logprobs_from_hidden, shift_to_targets


def packed_forward_hidden(params: qwen2.Params, config: Qwen2Config, tokens: jax.Array, segment_ids: jax.Array,
                          positions: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D]. tokens, segment_ids (0 = padding), positions: int32[B, T]."""
    return qwen2.forward_hidden(params, config, tokens, positions, segment_ids=segment_ids)[0]


def packed_token_logprobs(params: qwen2.Params, config: Qwen2Config, tokens: jax.Array, segment_ids: jax.Array,
                          positions: jax.Array, chunk_size: int = DEFAULT_CHUNK) -> jax.Array:
    """f32[B, T]: log p(tokens[t] | earlier tokens of its segment); 0 at segment starts and padding."""
    hidden = packed_forward_hidden(params, config, tokens, segment_ids, positions)
    next_tokens = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    logp, _ = logprobs_from_hidden(params, config, hidden, next_tokens, 1.0, chunk_size)
    logp = shift_to_targets(logp)
    continues = jnp.concatenate([jnp.zeros_like(segment_ids[:, :1], dtype=bool),
                                 (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)], axis=1)
    return jnp.where(continues, logp, 0.0)
