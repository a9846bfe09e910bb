"""Functional Qwen-2.5 (Qwen2 architecture) in JAX.

Params are a plain pytree (nested dicts of arrays) with the decoder layers stacked on
a leading `layers` axis, so the layer loop is one `lax.scan`: compile time does not
grow with depth (a 64-layer 32B model compiles as fast as a 2-layer test model).

    params = {
      "embed":      [V, D],
      "layers": {   # every leaf has a leading L axis
        "input_norm": [L, D], "post_attn_norm": [L, D],
        "q": [L, H, Dh, D], "q_bias": [L, H, Dh],
        "k": [L, K, Dh, D], "k_bias": [L, K, Dh],
        "v": [L, K, Dh, D], "v_bias": [L, K, Dh],
        "o": [L, D, H, Dh],
        "gate": [L, F, D], "up": [L, F, D], "down": [L, D, F],
      },
      "final_norm": [D],
      "lm_head":    [V, D],   # absent when embeddings are tied
    }

Weights keep the [out, in] order of torch's Linear, so a HuggingFace tensor maps
to ours by a free reshape (no transpose): conversion is a memcpy either way, and
XLA picks the matmul operand layout itself, so compute does not care.

KV cache (see `init_cache`): `{"k", "v": [L, B, S, K, Dh], "lengths": int32[B]}`.
Each row's valid entries are the contiguous slots [0, lengths[b]); new tokens are
written at slots lengths[b] + t, so rows of a batch may hold contexts of different
lengths (ragged decode, resume after tool output) without re-prefill.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from r1ci_jax.models.config import Qwen2Config

Params = dict[str, Any]
Cache = dict[str, jax.Array]
# fn(q [B, H, Dh], k_cache [B, S, K, Dh], v_cache [B, S, K, Dh], lengths int32[B]) -> [B, H, Dh]:
# attention of each row's one query over cache slots [0, lengths[b]) (a Pallas kernel).
DecodeAttention = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

__all__ = ["Qwen2Config", "init_params", "init_cache", "forward", "forward_hidden",
           "logits_from_hidden", "param_logical_axes", "cache_logical_axes"]


# ----------------------------------------------------------------------------- params

def param_shapes(config: Qwen2Config) -> Params:
    """Shape of every parameter, as a pytree of tuples (same structure as params)."""
    c = config
    L, D, H, K, Dh, F, V = (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads,
                            c.head_dim, c.intermediate_size, c.vocab_size)
    shapes: Params = {
        "embed": (V, D),
        "layers": {
            "input_norm": (L, D), "post_attn_norm": (L, D),
            "q": (L, H, Dh, D), "q_bias": (L, H, Dh),
            "k": (L, K, Dh, D), "k_bias": (L, K, Dh),
            "v": (L, K, Dh, D), "v_bias": (L, K, Dh),
            "o": (L, D, H, Dh),
            "gate": (L, F, D), "up": (L, F, D), "down": (L, D, F),
        },
        "final_norm": (D,),
    }
    if not c.tie_word_embeddings:
        shapes["lm_head"] = (V, D)
    return shapes


def param_logical_axes(config: Qwen2Config) -> Params:
    """Logical axis names of every parameter (mapped to mesh axes by sharding rules)."""
    axes: Params = {
        "embed": ("vocab", "embed"),
        "layers": {
            "input_norm": ("layers", "norm"), "post_attn_norm": ("layers", "norm"),
            "q": ("layers", "heads", "head_dim", "embed"), "q_bias": ("layers", "heads", "head_dim"),
            "k": ("layers", "kv_heads", "head_dim", "embed"), "k_bias": ("layers", "kv_heads", "head_dim"),
            "v": ("layers", "kv_heads", "head_dim", "embed"), "v_bias": ("layers", "kv_heads", "head_dim"),
            "o": ("layers", "embed", "heads", "head_dim"),
            "gate": ("layers", "mlp", "embed"), "up": ("layers", "mlp", "embed"),
            "down": ("layers", "embed", "mlp"),
        },
        "final_norm": ("norm",),
    }
    if not config.tie_word_embeddings:
        axes["lm_head"] = ("vocab", "embed")
    return axes


def cache_logical_axes() -> dict[str, tuple[str, ...]]:
    return {"k": ("layers", "batch", "cache_length", "kv_heads", "head_dim"),
            "v": ("layers", "batch", "cache_length", "kv_heads", "head_dim"),
            "lengths": ("batch",)}


def init_params(config: Qwen2Config, rng: jax.Array) -> Params:
    """Random params: normal(0, initializer_range) matrices, zero biases, unit norms."""
    shapes = param_shapes(config)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(rng, len(leaves))
    dtype = config.param_jnp_dtype
    out = []
    for (path, shape), key in zip(leaves, keys):
        name = path[-1].key
        if name.endswith("norm"):
            out.append(jnp.ones(shape, dtype))
        elif name.endswith("bias"):
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((config.initializer_range * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def init_cache(config: Qwen2Config, batch_size: int, max_len: int, dtype: Any = None) -> Cache:
    """Empty KV cache: k/v [L, B, S, K, Dh] zeros, lengths int32[B] zeros."""
    dtype = dtype or config.jnp_dtype
    shape = (config.num_layers, batch_size, max_len, config.num_kv_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "lengths": jnp.zeros((batch_size,), jnp.int32)}


# ----------------------------------------------------------------------------- layers

def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x: [..., D]; normalised in f32 (as transformers does), scaled in x's dtype."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * xf.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, half-split layout. x: [B, T, N, Dh], positions: int32[B, T]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention.

    q: [B, T, H, Dh]; k, v: [B, S, K, Dh] with H % K == 0; mask: bool[B, T, S].
    Returns [B, T, H, Dh]. Scores and softmax in f32; a fully masked row yields a
    uniform (finite) distribution instead of NaN, and its output is ignored anyway.
    """
    B, T, H, Dh = q.shape
    K = k.shape[2]
    qg = q.reshape(B, T, K, H // K, Dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (Dh ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(B, T, H, Dh)


def _write_cache(cache_layer: jax.Array, new: jax.Array, starts: jax.Array) -> jax.Array:
    """cache_layer: [B, S, K, Dh]; new: [B, T, K, Dh]; write row b at slot starts[b]."""
    write_row = lambda c, n, s: jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (s, 0, 0))
    return jax.vmap(write_row)(cache_layer, new, starts)


def attention_inputs(config: Qwen2Config, x: jax.Array, layer: Params,
                     positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One layer's q [B, T, H, Dh], k, v [B, T, K, Dh] (normed, projected, rotated) from x [B, T, D]."""
    dtype = config.jnp_dtype
    w = lambda name: layer[name].astype(dtype)
    h = rms_norm(x, layer["input_norm"], config.rms_norm_eps)
    q = jnp.einsum("btd,hkd->bthk", h, w("q")) + w("q_bias")
    k = jnp.einsum("btd,hkd->bthk", h, w("k")) + w("k_bias")
    v = jnp.einsum("btd,hkd->bthk", h, w("v")) + w("v_bias")
    return rope(q, positions, config.rope_theta), rope(k, positions, config.rope_theta), v


def attention_output_and_mlp(config: Qwen2Config, x: jax.Array, attn: jax.Array, layer: Params) -> jax.Array:
    """The rest of a layer: x [B, T, D] + o(attn [B, T, H, Dh]), then + MLP."""
    dtype = config.jnp_dtype
    w = lambda name: layer[name].astype(dtype)
    x = x + jnp.einsum("bthk,dhk->btd", attn, w("o"))
    h = rms_norm(x, layer["post_attn_norm"], config.rms_norm_eps)
    gated = jax.nn.silu(jnp.einsum("btd,fd->btf", h, w("gate"))) * jnp.einsum("btd,fd->btf", h, w("up"))
    return x + jnp.einsum("btf,df->btd", gated, w("down"))


def _decoder_layer(config: Qwen2Config, x: jax.Array, layer: Params, positions: jax.Array,
                   mask: jax.Array, cache_kv: tuple[jax.Array, jax.Array] | None,
                   cache_starts: jax.Array | None, decode_lengths: jax.Array | None = None,
                   decode_attention: DecodeAttention | None = None):
    dtype = config.jnp_dtype
    q, k, v = attention_inputs(config, x, layer, positions)
    if cache_kv is not None:
        k_all = _write_cache(cache_kv[0], k, cache_starts)
        v_all = _write_cache(cache_kv[1], v, cache_starts)
        new_cache_kv = (k_all, v_all)
        k, v = k_all.astype(dtype), v_all.astype(dtype)
    else:
        new_cache_kv = None
    if decode_attention is not None and decode_lengths is not None:
        attn = decode_attention(q[:, 0], k, v, decode_lengths)[:, None]
    else:
        attn = attention(q, k, v, mask)
    return attention_output_and_mlp(config, x, attn, layer), new_cache_kv


# ----------------------------------------------------------------------------- forward

def forward_hidden(params: Params, config: Qwen2Config, tokens: jax.Array,
                   positions: jax.Array | None = None, cache: Cache | None = None,
                   attention_mask: jax.Array | None = None,
                   decode_attention: DecodeAttention | None = None,
                   segment_ids: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """Final hidden states [B, T, D] (after the last norm) and the updated cache.

    See `forward` for the arguments.
    """
    B, T = tokens.shape
    valid = jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
    inverse = None
    if segment_ids is not None:
        if cache is not None or attention_mask is not None:
            raise ValueError("segment_ids (packed rows) go without a cache and without attention_mask")
        starts = None
        positions, mask = _packed_positions_and_mask(segment_ids, positions)
    elif cache is not None:
        # Pads are moved behind each row's real tokens so that cache slots stay
        # contiguous whatever the padding side; outputs are put back in input order.
        order = jnp.argsort(~valid, axis=1, stable=True)
        inverse = jnp.argsort(order, axis=1)
        tokens = jnp.take_along_axis(tokens, order, axis=1)
        valid = jnp.take_along_axis(valid, order, axis=1)
        if positions is not None:
            positions = jnp.take_along_axis(positions, order, axis=1)
        starts = cache["lengths"].astype(jnp.int32)
        slots = starts[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]  # [B, T]
        if positions is None:
            positions = slots
        S = cache["k"].shape[2]
        mask = jnp.arange(S, dtype=jnp.int32)[None, None, :] <= slots[:, :, None]  # [B, T, S]
    else:
        starts = None
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
        causal = jnp.tril(jnp.ones((T, T), bool))
        mask = causal[None] & valid[:, None, :]
    positions = positions.astype(jnp.int32)

    x = jnp.take(params["embed"], tokens, axis=0).astype(config.jnp_dtype)

    decode_lengths = None
    if decode_attention is not None and cache is not None and T == 1:
        # Rows without a real token this step (finished rows) get length 0 so a
        # ragged kernel skips them; their output is ignored anyway.
        decode_lengths = jnp.where(valid[:, 0], starts + 1, 0).astype(jnp.int32)

    def body(x, scanned):
        layer, cache_kv = scanned
        x, new_kv = _decoder_layer(config, x, layer, positions, mask, cache_kv, starts,
                                   decode_lengths, decode_attention)
        return x, new_kv

    if config.remat:
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    cache_xs = (cache["k"], cache["v"]) if cache is not None else None
    x, new_kv = jax.lax.scan(body, x, (params["layers"], cache_xs))
    x = rms_norm(x, params["final_norm"], config.rms_norm_eps)

    new_cache = None
    if cache is not None:
        x = jnp.take_along_axis(x, inverse[:, :, None], axis=1)
        new_cache = {"k": new_kv[0], "v": new_kv[1],
                     "lengths": starts + valid.sum(axis=1).astype(jnp.int32)}
    return x, new_cache


def _packed_positions_and_mask(segment_ids: jax.Array, positions: jax.Array | None):
    """Packed rows: causal attention within each segment (0 = padding); positions
    default to the index within the segment. Returns (positions [B, T], mask [B, T, T])."""
    T = segment_ids.shape[1]
    segment_ids = segment_ids.astype(jnp.int32)
    if positions is None:
        starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                                  segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
        index = jnp.arange(T, dtype=jnp.int32)[None, :]
        positions = index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    causal = jnp.tril(jnp.ones((T, T), bool))
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    # A padding query attends to itself only, so its (ignored) output stays finite.
    return positions, (causal[None] & same) | jnp.eye(T, dtype=bool)[None]


def logits_from_hidden(params: Params, config: Qwen2Config, hidden: jax.Array) -> jax.Array:
    """hidden: [..., D] -> f32 logits [..., V] (tied: embed, else lm_head; both [V, D])."""
    w = params["embed" if config.tie_word_embeddings else "lm_head"].astype(config.jnp_dtype)
    return jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=jnp.float32)


def forward(params: Params, config: Qwen2Config, tokens: jax.Array,
            positions: jax.Array | None = None, cache: Cache | None = None,
            attention_mask: jax.Array | None = None,
            decode_attention: DecodeAttention | None = None,
            segment_ids: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """Run the model. Pure and jittable (config is static: it is hashable).

    tokens: int32[B, T]. attention_mask: {0,1}[B, T], 1 on real tokens, any padding
    side (default: all real). positions: int32[B, T] RoPE positions; default without
    a cache: index among the row's real tokens (cumsum(mask) - 1, what transformers'
    `generate` uses for left padding); with a cache: the slot the token is written to.
    cache: from `init_cache` or a previous call. Without a cache attention is causal
    over this call's real tokens; with one, each row's real tokens are appended at
    slots lengths[b]... and attend to everything before them in that row.
    decode_attention: optional ragged decode-attention kernel (`DecodeAttention`),
    used instead of masked dense attention when a cache is given and T == 1.
    segment_ids: int32[B, T] for packed rows (several sequences per row, 0 = padding;
    no cache): attention stays within a segment, positions restart at each segment.
    Returns (logits f32[B, T, V], updated cache or None). Logits at pad positions
    are meaningless.
    """
    hidden, new_cache = forward_hidden(params, config, tokens, positions, cache, attention_mask,
                                       decode_attention, segment_ids)
    return logits_from_hidden(params, config, hidden), new_cache


@functools.partial(jax.jit, static_argnums=(1,))
def forward_jit(params: Params, config: Qwen2Config, tokens: jax.Array,
                positions: jax.Array | None = None, cache: Cache | None = None,
                attention_mask: jax.Array | None = None):
    """`forward` under jit (config static)."""
    return forward(params, config, tokens, positions, cache, attention_mask)


def with_dtype(config: Qwen2Config, dtype: str, param_dtype: str | None = None) -> Qwen2Config:
    return dataclasses.replace(config, dtype=dtype, param_dtype=param_dtype or config.param_dtype)
