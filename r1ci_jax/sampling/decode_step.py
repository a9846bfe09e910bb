"""One decode step of the Qwen2 model with the stacked KV cache carried through the layers.

`models.qwen2.forward` with a cache scans over the layers with each layer's cache
slice as a scanned input and its updated copy as a scanned output, so XLA copies the
whole cache in and out every call: fine for a prefill, a large share of a
one-token step. Here the stacked cache is part of the scan carry: each layer writes
only the new token's K/V ([B, K, Dh], in place) and the attention kernel reads its
layer of the stacked cache directly (`decode_attention(..., layer=i)`). The layer
math itself is the model's (`attention_inputs`, `attention_output_and_mlp`), so the
two paths cannot drift apart; tests compare them.

On CPU, XLA copies each layer's weights out of the stacked arrays (and transposes
them for its matmul library) inside every step of a layer scan. `host_layout`
prepares them once per decode chunk instead (outside the decode loop): per-layer
slices, unrolled over layers, and the LM head as [D, V]. It costs a copy of the
weights, so accelerators keep the scan (their matmuls read the stacked slices in
place).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.models.qwen2 import (Cache, Params, attention_inputs, attention_output_and_mlp,
                                   logits_from_hidden, rms_norm)

# fn(q [B, H, Dh], k [L, B, S, K, Dh], v [L, B, S, K, Dh], lengths int32[B], layer=i) -> [B, H, Dh]
StackedDecodeAttention = Callable[..., jax.Array]


def host_layout(params: Params, config: Qwen2Config) -> tuple[list[Params], jax.Array]:
    """(per-layer params, LM head [D, V]) for `decode_step` on CPU (see the module docstring)."""
    layers = [jax.tree.map(lambda a, i=i: a[i], params["layers"]) for i in range(config.num_layers)]
    head = params["embed" if config.tie_word_embeddings else "lm_head"].astype(config.jnp_dtype).T
    return layers, head


def decode_step(params: Params, config: Qwen2Config, tokens: jax.Array, cache: Cache, active: jax.Array,
                attention_fn: StackedDecodeAttention, layers: Sequence[Params] | None = None,
                head: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """Feed one token per row; returns (logits f32[B, V], cache).

    tokens: int32[B]; active: bool[B]. Active rows write their token at slot
    lengths[b] and advance; inactive rows write nothing that counts (their write
    lands at slot lengths[b], outside their valid range) and get attention length 0,
    so a ragged kernel skips them. Matches `forward(params, config, tokens[:, None],
    cache=cache, attention_mask=active[:, None])`. layers, head: from `host_layout`
    (then the layers are unrolled), else the stacked params are scanned.
    """
    B = tokens.shape[0]
    starts = cache["lengths"].astype(jnp.int32)
    positions = starts[:, None]                                      # [B, 1]
    lengths = jnp.where(active, starts + 1, 0)
    rows = jnp.arange(B)
    x = jnp.take(params["embed"], tokens[:, None], axis=0).astype(config.jnp_dtype)  # [B, 1, D]

    def layer_step(carry, scanned):
        x, k_cache, v_cache = carry
        layer, index = scanned
        q, k, v = attention_inputs(config, x, layer, positions)
        k_cache = k_cache.at[index, rows, starts].set(k[:, 0].astype(k_cache.dtype))
        v_cache = v_cache.at[index, rows, starts].set(v[:, 0].astype(v_cache.dtype))
        attn = attention_fn(q[:, 0], k_cache, v_cache, lengths, layer=index)
        return (attention_output_and_mlp(config, x, attn[:, None].astype(x.dtype), layer), k_cache, v_cache), None

    carry = (x, cache["k"], cache["v"])
    if layers is None:
        layer_ids = jnp.arange(config.num_layers, dtype=jnp.int32)
        carry, _ = jax.lax.scan(layer_step, carry, (params["layers"], layer_ids))
    else:
        for index, layer in enumerate(layers):
            carry, _ = layer_step(carry, (layer, index))
    x, k_cache, v_cache = carry
    x = rms_norm(x, params["final_norm"], config.rms_norm_eps)
    if head is None:
        logits = logits_from_hidden(params, config, x[:, 0])
    else:
        logits = jnp.dot(x[:, 0], head, preferred_element_type=jnp.float32)
    new_cache = {"k": k_cache, "v": v_cache, "lengths": starts + active.astype(jnp.int32)}
    return logits, new_cache
