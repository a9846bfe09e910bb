"""Per-token logprobs (and entropies) of a sequence under the policy, memory-efficiently.

The vocabulary projection is done a chunk of positions at a time under
`jax.checkpoint`, so only one chunk's f32 logits [B, C, V] is alive, in the forward
and in the backward pass (where each chunk's logits are recomputed); for Qwen's 152k
vocabulary the full [B, T, V] tensor would dwarf the rest of the activations.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.models.qwen2 import Params, forward_hidden, logits_from_hidden

DEFAULT_CHUNK = 256


def logprobs_from_hidden(params: Params, config: Qwen2Config, hidden: jax.Array, targets: jax.Array,
                         temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK,
                         with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """log p(targets[b, t] | hidden[b, t]) at `temperature`, and optionally the entropy.

    hidden: [B, T, D] final hidden states; targets: int32[B, T] (already aligned: the
    token each position predicts). Returns (logp f32[B, T], entropy f32[B, T] or None).
    """
    B, T, D = hidden.shape
    chunk = max(1, min(chunk_size, T))
    n = -(-T // chunk)
    pad = n * chunk - T
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hidden_chunks = hidden.reshape(B, n, chunk, D).swapaxes(0, 1)      # [n, B, C, D]
    target_chunks = targets.reshape(B, n, chunk).swapaxes(0, 1)        # [n, B, C]

    def one_chunk(h: jax.Array, tgt: jax.Array):
        logits = logits_from_hidden(params, config, h)
        if temperature != 1.0:
            logits = logits / temperature
        lse = jax.nn.logsumexp(logits, axis=-1)
        logp = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0] - lse
        if not with_entropy:
            return logp, jnp.zeros_like(logp)
        probs = jnp.exp(logits - lse[..., None])
        return logp, lse - jnp.sum(probs * logits, axis=-1)

    if n > 1:
        # Recompute each chunk's logits in the backward pass instead of keeping all of
        # them; with a single chunk there is nothing to save, only the recompute to pay.
        one_chunk = jax.checkpoint(one_chunk)
    logp, entropy = jax.lax.map(lambda xs: one_chunk(*xs), (hidden_chunks, target_chunks))
    logp = logp.swapaxes(0, 1).reshape(B, n * chunk)[:, :T]
    entropy = entropy.swapaxes(0, 1).reshape(B, n * chunk)[:, :T]
    return logp, (entropy if with_entropy else None)


def shift_to_targets(values: jax.Array) -> jax.Array:
    """[B, T] values computed at the predicting position t-1 -> stored at position t (0 at t=0)."""
    return jnp.concatenate([jnp.zeros_like(values[:, :1]), values[:, :-1]], axis=1)


def token_logprobs_and_entropy(params: Params, config: Qwen2Config, tokens: jax.Array,
                               attention_mask: jax.Array, temperature: float = 1.0,
                               chunk_size: int = DEFAULT_CHUNK, with_entropy: bool = True,
                               ) -> tuple[jax.Array, jax.Array | None]:
    """Like `token_logprobs`, plus the entropy of the distribution each token was drawn from.

    entropy[b, t] is the entropy (at `temperature`) of p(. | tokens[b, :t]); 0 at t=0 and pads.
    """
    hidden, _ = forward_hidden(params, config, tokens, attention_mask=attention_mask)
    next_tokens = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    logp, entropy = logprobs_from_hidden(params, config, hidden, next_tokens, temperature, chunk_size, with_entropy)
    valid = attention_mask.astype(jnp.float32)
    logp = shift_to_targets(logp) * valid
    if entropy is not None:
        entropy = shift_to_targets(entropy) * valid
    return logp, entropy


def token_logprobs(params: Params, config: Qwen2Config, tokens: jax.Array, attention_mask: jax.Array,
                   temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK) -> jax.Array:
    """Per-token logprobs of `tokens` under `params`, sampled at `temperature`.

    tokens: int32[B, T]; attention_mask: {0,1}[B, T] (1 on real tokens; right padding
    as in EpisodeBatch). Returns f32[B, T] where position t holds
    log p(tokens[t] | tokens[<t]) with logits / temperature; position 0 and padding hold 0.
    Pure and jittable (config, temperature and chunk_size static).
    """
    return token_logprobs_and_entropy(params, config, tokens, attention_mask, temperature, chunk_size,
                                      with_entropy=False)[0]


@functools.partial(jax.jit, static_argnums=(1, 4, 5))
def token_logprobs_jit(params: Params, config: Qwen2Config, tokens: jax.Array, attention_mask: jax.Array,
                       temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK) -> jax.Array:
    """`token_logprobs` under jit (config, temperature, chunk_size static)."""
    return token_logprobs(params, config, tokens, attention_mask, temperature, chunk_size)
