"""The Qwen2 model over packed rows: attention restricted to each token's own segment.

`models.qwen2.forward` masks only padding; packed rows also need a block-diagonal
mask, so this runs the same decoder layers (qwen2._decoder_layer) with that mask.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from r1ci_jax.models import qwen2
from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.rl.logprobs import DEFAULT_CHUNK, logprobs_from_hidden, shift_to_targets


def packed_forward_hidden(params: qwen2.Params, config: Qwen2Config, tokens: jax.Array, segment_ids: jax.Array,
                          positions: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D]. tokens, segment_ids (0 = padding), positions: int32[B, T]."""
    T = tokens.shape[1]
    causal = jnp.tril(jnp.ones((T, T), bool))
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    # A padding query attends to itself only, so its (ignored) output stays finite.
    mask = (causal[None] & same) | jnp.eye(T, dtype=bool)[None]
    x = jnp.take(params["embed"], tokens, axis=0).astype(config.jnp_dtype)

    def body(x, layer):
        return qwen2._decoder_layer(config, x, layer, positions, mask, None, None)[0], None

    if config.remat:
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    x, _ = jax.lax.scan(body, x, params["layers"])
    return qwen2.rms_norm(x, params["final_norm"], config.rms_norm_eps)


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
