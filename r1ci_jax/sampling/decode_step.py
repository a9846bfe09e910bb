"""One decode step of the Qwen2 model with the stacked KV cache carried through the layers.

`models.qwen2.forward` with a cache scans over the layers with each layer's cache
slice as a scanned input and its updated copy as a scanned output, so XLA copies the
whole cache in and out every call: fine for a prefill, a large share of a
one-token step. Here the stacked cache is part of the scan carry: each layer writes
only the new token's K/V ([B, K, Dh], in place) and the attention kernel reads its
layer of the stacked cache directly (`decode_attention(..., layer=i)`). The scanned
layer math is the model's own (`attention_inputs`, `attention_output_and_mlp`);
tests hold this step to the model's forward.

On CPU, XLA copies each layer's weights out of the stacked arrays (and transposes
them for its matmul library) inside every step of a layer scan, and a one-token
step is bound by reading weights and by per-op overhead. `host_layout` prepares
the weights once per params instead (outside the decode loop; `Engine.prepare`,
kept by the `Sampler`): per layer, unrolled, with q/k/v fused into one matrix and
gate/up into another (7 matmuls per layer become 4), every matrix kept [out, in]
and multiplied weight-first (`weight_first_matmul`); the LM head is used as stored.
For fp32 models, when the C++ kernels are built (`kernels/cpu_matmul.py`), every
matrix is instead packed into 16-row panels and multiplied by that kernel, ~1.6x
faster than XLA's dot at decode batch sizes. It costs a copy of the weights, so
accelerators keep the scan (their matmuls read the stacked slices in place).
`host_attention_inputs` / `host_output_and_mlp` are the model's two layer halves
restated on those fused weights; tests hold them to the model's forward too.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from r1ci_jax.kernels import cpu_matmul
from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.models.qwen2 import (Cache, Params, attention_inputs, attention_output_and_mlp,
                                   logits_from_hidden, rms_norm, rope)

# fn(q [B, H, Dh], k [L, B, S, K, Dh], v [L, B, S, K, Dh], lengths int32[B], layer=i) -> [B, H, Dh]
StackedDecodeAttention = Callable[..., jax.Array]


def host_layout(params: Params, config: Qwen2Config, packed: bool = False) -> tuple[list[Params], jax.Array]:
    """(per-layer fused weights, LM head) for `decode_step` on CPU (module docstring).

    Each layer, every matrix [out, in] as stored: qkv [(H + 2K) Dh, D], qkv_bias
    [(H + 2K) Dh], o [D, H Dh], gate_up [2F, D], down [D, F] in the compute dtype;
    norms as stored. The head is [V, D]. packed: every matrix (head included) is
    `cpu_matmul.pack`ed instead, f32[ceil(out / 16), in, 16] (fp32 models only).
    """
    dtype, D = config.jnp_dtype, config.hidden_size
    if packed and dtype != jnp.float32:
        raise ValueError(f"host_layout(packed=True) needs an fp32 model; config.dtype is {config.dtype}")
    finish = cpu_matmul.pack if packed else (lambda w: w)
    stacked = params["layers"]
    layers = []
    for i in range(config.num_layers):
        layer = jax.tree.map(lambda a, i=i: a[i], stacked)
        rows = lambda name, layer=layer: layer[name].reshape(-1, D)  # [out, D]
        layers.append({
            "qkv": finish(jnp.concatenate([rows("q"), rows("k"), rows("v")]).astype(dtype)),
            "qkv_bias": jnp.concatenate([layer[f"{n}_bias"].reshape(-1) for n in "qkv"]).astype(dtype),
            "o": finish(layer["o"].reshape(D, -1).astype(dtype)),
            "gate_up": finish(jnp.concatenate([layer["gate"], layer["up"]]).astype(dtype)),
            "down": finish(layer["down"].astype(dtype)),
            "input_norm": layer["input_norm"], "post_attn_norm": layer["post_attn_norm"]})
    head = params["embed" if config.tie_word_embeddings else "lm_head"].astype(dtype)
    return layers, finish(head)


def weight_first_matmul(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """x [B, in], w [out, in] -> x @ w.T [B, out], computed as (w @ x.T).T.

    At decode batch sizes XLA:CPU's matmul streams a weight faster as the left
    operand of an [out, B] product than as the right operand of [B, out] (bench/RESULTS.md:
    ~7% per generate call for the LM head, ~9% more for the layers). The barrier keeps
    layout assignment from folding the transpose back into the dot: without it the
    head alone made a generate call 19% slower than with it.
    """
    out = jax.lax.dot_general(w, x, (((1,), (1,)), ((), ())), preferred_element_type=out_dtype)
    return jax.lax.optimization_barrier(out).T


def host_matmul(x: jax.Array, w: jax.Array, out_features: int, out_dtype=None) -> jax.Array:
    """x [B, in] @ W.T -> [B, out_features] for a `host_layout` matrix: packed
    (3-D, the C++ kernel, f32 out) or [out, in] (`weight_first_matmul`)."""
    if w.ndim == 3:
        return cpu_matmul.packed_matmul(x, w, out_features)
    return weight_first_matmul(x, w, out_dtype)


def host_attention_inputs(config: Qwen2Config, x: jax.Array, layer: Params,
                          positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`attention_inputs` on `host_layout` weights: x [B, D], positions int32[B, 1] ->
    q [B, H, Dh], k, v [B, K, Dh]."""
    B = x.shape[0]
    H, K, Dh = config.num_heads, config.num_kv_heads, config.head_dim
    h = rms_norm(x, layer["input_norm"], config.rms_norm_eps)
    qkv = host_matmul(h, layer["qkv"], (H + 2 * K) * Dh) + layer["qkv_bias"]
    q = rope(qkv[:, :H * Dh].reshape(B, 1, H, Dh), positions, config.rope_theta)[:, 0]
    k = rope(qkv[:, H * Dh:(H + K) * Dh].reshape(B, 1, K, Dh), positions, config.rope_theta)[:, 0]
    return q, k, qkv[:, (H + K) * Dh:].reshape(B, K, Dh)


def host_output_and_mlp(config: Qwen2Config, x: jax.Array, attn: jax.Array, layer: Params) -> jax.Array:
    """`attention_output_and_mlp` on `host_layout` weights: x [B, D], attn [B, H, Dh] -> [B, D]."""
    D, F = config.hidden_size, config.intermediate_size
    x = x + host_matmul(attn.astype(x.dtype).reshape(x.shape[0], -1), layer["o"], D)
    h = rms_norm(x, layer["post_attn_norm"], config.rms_norm_eps)
    gate_up = host_matmul(h, layer["gate_up"], 2 * F)
    return x + host_matmul(jax.nn.silu(gate_up[:, :F]) * gate_up[:, F:], layer["down"], D)


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

    def write_and_attend(k_cache, v_cache, index, q, k, v):
        """Write the new token's k, v [B, K, Dh] at slot starts[b] of layer `index`; attend with q [B, H, Dh]."""
        k_cache = k_cache.at[index, rows, starts].set(k.astype(k_cache.dtype))
        v_cache = v_cache.at[index, rows, starts].set(v.astype(v_cache.dtype))
        return attention_fn(q, k_cache, v_cache, lengths, layer=index), k_cache, v_cache

    def layer_step(carry, scanned):
        x, k_cache, v_cache = carry
        layer, index = scanned
        q, k, v = attention_inputs(config, x, layer, positions)
        attn, k_cache, v_cache = write_and_attend(k_cache, v_cache, index, q[:, 0], k[:, 0], v[:, 0])
        return (attention_output_and_mlp(config, x, attn[:, None].astype(x.dtype), layer), k_cache, v_cache), None

    if layers is None:
        layer_ids = jnp.arange(config.num_layers, dtype=jnp.int32)
        (x, k_cache, v_cache), _ = jax.lax.scan(layer_step, (x, cache["k"], cache["v"]),
                                                (params["layers"], layer_ids))
    else:
        x, k_cache, v_cache = x[:, 0], cache["k"], cache["v"]
        for index, layer in enumerate(layers):
            q, k, v = host_attention_inputs(config, x, layer, positions)
            attn, k_cache, v_cache = write_and_attend(k_cache, v_cache, index, q, k, v)
            x = host_output_and_mlp(config, x, attn, layer)
        x = x[:, None]
    x = rms_norm(x, params["final_norm"], config.rms_norm_eps)
    if head is None:
        logits = logits_from_hidden(params, config, x[:, 0])
    else:
        logits = host_matmul(x[:, 0], head, config.vocab_size, jnp.float32)
    new_cache = {"k": k_cache, "v": v_cache, "lengths": starts + active.astype(jnp.int32)}
    return logits, new_cache
