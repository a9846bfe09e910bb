"""The sampler's jitted device programs: extend (prefill / append) and the decode loop.

Both are compiled once per shape and reused; shapes are kept few on purpose
(fixed cache size, prompt / append widths bucketed to powers of two, fixed
decode-chunk length with a dynamic step count), and the KV cache is donated so
XLA updates it in place.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from r1ci_jax.kernels import cpu_ffi
from r1ci_jax.kernels import decode_attention as attention_kernels
from r1ci_jax.kernels import sampling as sampling_kernels
from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.models.qwen2 import Cache, Params, forward_hidden
from r1ci_jax.sampling.decode_step import decode_step, host_layout
from r1ci_jax.sampling.state import FINISH_EOS, FINISH_LENGTH, FINISH_NONE, FINISH_STOP

KERNEL_CHOICES = ("auto", "pallas", "reference")


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Static settings of one compiled decode loop.

    chunk: steps per device call (output buffer width); the host checks stop
        strings between chunks. max_len: tokens a row may hold in total.
    top_k_bound: every row's top_k when it is one value > 0 (the plain-JAX sampler
        then ranks only that many scores instead of sorting the vocabulary).
    """
    chunk: int
    max_len: int
    greedy: bool
    use_top_k: bool
    use_top_p: bool
    top_k_bound: int | None = None


@dataclasses.dataclass
class DecodeOutputs:
    """What one decode chunk produced. tokens/logprobs: [B, chunk], valid up to counts[b]."""
    tokens: jax.Array
    logprobs: jax.Array
    counts: jax.Array
    finish: jax.Array


class Engine:
    """Compiled extend / decode functions for one model config and kernel choice.

    kernels: "auto" (Pallas kernels on TPU / GPU, plain JAX elsewhere, and on CPU the
    C++ matmul of `kernels/cpu_matmul.py` for fp32 models when it is built), "pallas"
    (always the Pallas kernels; interpreted on CPU), "reference" (always plain JAX,
    XLA's dot included).
    mesh: with a Mesh, params / cache / batch arrays carry the shardings of
    `r1ci_jax.sharding` and the kernels run per shard under shard_map.
    """

    def __init__(self, config: Qwen2Config, kernels: str = "auto", mesh: Any = None, rules: Any = None):
        if kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels={kernels!r}; expected one of {KERNEL_CHOICES}")
        self.config = config
        self.kernels = kernels
        self.mesh = mesh
        self.rules = rules
        self.attention_impl = attention_kernels.resolve_impl(kernels)
        self.sampling_impl = sampling_kernels.resolve_impl(kernels)
        # CPU only: per-layer fused weights prepared once per params (`prepare`, decode_step),
        # packed for the C++ matmul kernel when it is built and the model is fp32.
        self.host_layout = jax.default_backend() == "cpu" and mesh is None
        self.packed_matmul = (self.host_layout and kernels != "reference" and config.jnp_dtype == jnp.float32
                              and cpu_ffi.available())
        self._prepare = jax.jit(functools.partial(host_layout, config=config, packed=self.packed_matmul))
        self._extend = jax.jit(self._extend_impl, donate_argnums=(1,))
        self._decode = jax.jit(self._decode_impl, static_argnames=("spec",), donate_argnums=(1,))
        self._truncate = jax.jit(self._truncate_impl, donate_argnums=(0,))

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def shared(config: Qwen2Config, kernels: str = "auto", mesh: Any = None, rules: Any = None) -> "Engine":
        """One Engine per (config, kernels, mesh, rules): Samplers built for the same model
        (e.g. one per RL step) reuse its compiled programs instead of recompiling."""
        return Engine(config, kernels, mesh, rules)

    # ------------------------------------------------------------------ kernels

    def _attention_fn(self):
        """fn(q [B, H, Dh], k, v [L, B, S, K, Dh], lengths int32[B], *, layer) -> [B, H, Dh]."""
        # The user's choice, not the resolved one: "auto" may still fall back per shape
        # (e.g. an f32 cache on GPU), "pallas" raises instead.
        fn = functools.partial(attention_kernels.decode_attention, impl=self.kernels)
        if self.mesh is None or self.attention_impl in attention_kernels.PLAIN_JAX_IMPLS:
            return fn  # plain JAX partitions itself under GSPMD
        from jax.sharding import PartitionSpec as P

        from r1ci_jax.sharding import logical_to_spec
        batch = logical_to_spec(("batch",), self.rules)[0]
        heads = logical_to_spec(("heads",), self.rules)[0]
        kv_heads = logical_to_spec(("kv_heads",), self.rules)[0]
        cache_spec = P(None, batch, None, kv_heads, None)
        # Rows and kv-head groups are independent: each shard runs the kernel on its slice.
        sharded = jax.shard_map(lambda q, k, v, lengths, layer: fn(q, k, v, lengths, layer=layer),
                                mesh=self.mesh,
                                in_specs=(P(batch, heads, None), cache_spec, cache_spec, P(batch), P()),
                                out_specs=P(batch, heads, None), check_vma=False)
        return lambda q, k, v, lengths, *, layer: sharded(q, k, v, lengths, layer)

    def _sample_fn(self, spec: DecodeSpec):
        fn = functools.partial(sampling_kernels.sample, use_top_k=spec.use_top_k, use_top_p=spec.use_top_p,
                               greedy=spec.greedy, impl=self.kernels, top_k_bound=spec.top_k_bound)
        if self.mesh is None or self.sampling_impl == "reference":
            return fn
        from jax.sharding import PartitionSpec as P

        from r1ci_jax.sharding import logical_to_spec
        batch = logical_to_spec(("batch",), self.rules)[0]
        # Whole vocab rows per shard (the logits' vocab axis is gathered).
        return jax.shard_map(fn, mesh=self.mesh,
                             in_specs=(P(batch, None), P(batch), P(batch), P(batch), P(batch, None)),
                             out_specs=(P(batch), P(batch)), check_vma=False)

    # ------------------------------------------------------------------ programs

    def _extend_impl(self, params: Params, cache: Cache, tokens: jax.Array, mask: jax.Array) -> Cache:
        """Append each row's real tokens (mask 1) to its cache. tokens, mask: int32[B, T]."""
        _, cache = forward_hidden(params, self.config, tokens, cache=cache, attention_mask=mask)
        return cache

    def _truncate_impl(self, cache: Cache, lengths: jax.Array) -> Cache:
        """Set the cache lengths (a stop string cut rows back); k/v stay in place."""
        return {**cache, "lengths": lengths.astype(jnp.int32)}

    def _decode_impl(self, params: Params, cache: Cache, rng: jax.Array, pending: jax.Array, done: jax.Array,
                     budget: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                     eos_ids: jax.Array, stop_ids: jax.Array, num_steps: jax.Array, host_weights: Any, *,
                     spec: DecodeSpec):
        """Up to num_steps (<= spec.chunk) decode steps, on device, until every row is done.

        pending: int32[B] tokens to feed; done: bool[B]; budget: int32[B] tokens each
        row may still generate; temperature/top_k/top_p: per row [B]; eos_ids,
        stop_ids: int32[N] (padded with -1); host_weights: `prepare(params)` (None
        off the CPU host layout). A step feeds every unfinished row's
        pending token, samples its next token and finishes the row on EOS ("eos"), a
        stop token id ("stop"), an exhausted budget or a full context ("length").
        Finished rows are masked out of the cache write and get length 0 in the
        decode-attention kernel, which then skips them.
        Returns (cache, rng, pending, done, DecodeOutputs).
        """
        B = pending.shape[0]
        rows = jnp.arange(B)
        attention_fn = self._attention_fn()
        sample_fn = self._sample_fn(spec)
        layers, head = host_weights if self.host_layout else (None, None)

        def keep_going(carry):
            step, done = carry[0], carry[4]
            return (step < num_steps) & jnp.any(~done)

        def one_step(carry):
            step, cache, rng, pending, done, tokens, logprobs, counts, finish = carry
            active = ~done
            logits, cache = decode_step(params, self.config, pending, cache, active, attention_fn, layers, head)
            rng, key = jax.random.split(rng)
            seeds = jax.lax.bitcast_convert_type(jax.random.bits(key, (B, 2), jnp.uint32), jnp.int32)
            token, logprob = sample_fn(logits, temperature, top_k, top_p, seeds)
            # counts[b] <= step < chunk, so the write stays in bounds; a finished
            # row's write lands past its count and is never read.
            tokens = tokens.at[rows, counts].set(token)
            logprobs = logprobs.at[rows, counts].set(logprob)
            counts = counts + active.astype(jnp.int32)
            pending = jnp.where(active, token, pending)
            is_eos = jnp.any(token[:, None] == eos_ids[None, :], axis=1)
            is_stop = jnp.any(token[:, None] == stop_ids[None, :], axis=1)
            # Context = cache + the new pending token; the next step needs a free slot.
            full = (counts >= budget) | (cache["lengths"] + 1 >= spec.max_len)
            code = jnp.where(is_eos, FINISH_EOS, jnp.where(is_stop, FINISH_STOP,
                                                            jnp.where(full, FINISH_LENGTH, FINISH_NONE)))
            newly_done = active & (code != FINISH_NONE)
            finish = jnp.where(newly_done, code, finish)
            return (step + 1, cache, rng, pending, done | newly_done, tokens, logprobs, counts, finish)

        carry = (jnp.int32(0), cache, rng, pending, done,
                 jnp.zeros((B, spec.chunk), jnp.int32), jnp.zeros((B, spec.chunk), jnp.float32),
                 jnp.zeros((B,), jnp.int32), jnp.full((B,), FINISH_NONE, jnp.int32))
        _, cache, rng, pending, done, tokens, logprobs, counts, finish = jax.lax.while_loop(
            keep_going, one_step, carry)
        return cache, rng, pending, done, DecodeOutputs(tokens, logprobs, counts, finish)

    # ------------------------------------------------------------------ host entry points

    def extend(self, params: Params, cache: Cache, tokens: jax.Array, mask: jax.Array) -> Cache:
        return self._extend(params, cache, tokens, mask)

    def truncate(self, cache: Cache, lengths: jax.Array) -> Cache:
        return self._truncate(cache, lengths)

    def prepare(self, params: Params) -> Any:
        """What `decode` needs besides params, computed once per params: on the CPU host
        layout the fused (and, for the C++ matmul, packed) weights of `host_layout`, a
        copy of the weights; None elsewhere."""
        return self._prepare(params) if self.host_layout else None

    def decode(self, params: Params, cache: Cache, rng: jax.Array, pending: jax.Array, done: jax.Array,
               budget: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
               eos_ids: jax.Array, stop_ids: jax.Array, num_steps: int, spec: DecodeSpec,
               host_weights: Any = None):
        if self.host_layout and host_weights is None:
            host_weights = self.prepare(params)
        return self._decode(params, cache, rng, pending, done, budget, temperature, top_k, top_p,
                            eos_ids, stop_ids, jnp.int32(num_steps), host_weights, spec=spec)


jax.tree_util.register_dataclass(DecodeOutputs, data_fields=["tokens", "logprobs", "counts", "finish"],
                                 meta_fields=[])
