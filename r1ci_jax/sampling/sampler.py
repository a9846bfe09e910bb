"""Sampler: batched generation with a fixed-shape KV cache, on-device decode loop and resume.

    sampler = Sampler(params, config, tokenizer, max_len=4096)
    outs = sampler.generate(["def f(x):", [1, 2, 3]], SamplingParams(temperature=0.7, stop=["```"]))

    # rollout with a code interpreter: decode, run tool calls, append their output, resume
    state = sampler.start(prompts, SamplingParams(stop=["```\\n"]))
    outs, state = sampler.decode(state)
    outs, state = sampler.continue_(state, {0: tool_output_ids, 3: "```output\\n42\\n```\\n"})

Flow of one call: prefill runs once over the padded batch (`Engine.extend`); the
decode loop then runs on device in chunks of `chunk_size` steps (`lax.while_loop`,
exiting early once every row is done); between chunks the host reads the new tokens,
applies exact stop-string matching (`stops.find_stop`) and, for a row that stopped
in the middle of a chunk, drops the tokens after the stop and rolls its cache
length back, so cache and kept tokens agree. `continue_` appends tokens to chosen
rows' caches (only those tokens are processed) and resumes.

Finished or paused rows stay in the batch: they are masked out of cache writes and
skipped by the decode-attention kernel; only rows resumed by `continue_` (or not
yet finished) decode.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.models.qwen2 import Params, init_cache
from r1ci_jax.sampling import stops as stop_strings
from r1ci_jax.sampling.engine import DecodeSpec, Engine
from r1ci_jax.sampling.params import SamplingParams
from r1ci_jax.sampling.state import FINISH_EOS, FINISH_NONE, FINISH_REASONS, FINISH_STOP, GenerationOutput, SamplerState

Prompt = str | Sequence[int]
_MIN_BUCKET = 8
_ID_SLOTS = 8  # eos / stop-token id arrays are padded to a multiple of this (fewer recompiles)


def _bucket(n: int, cap: int) -> int:
    """Smallest power of two >= n (at least _MIN_BUCKET), at most cap."""
    b = _MIN_BUCKET
    while b < n:
        b *= 2
    return min(b, cap)


def _padded_ids(ids: Sequence[int]) -> np.ndarray:
    width = max(_ID_SLOTS, -(-len(ids) // _ID_SLOTS) * _ID_SLOTS)
    out = np.full((width,), -1, np.int32)
    out[:len(ids)] = ids
    return out


def _frozen(x: Any) -> Any:
    """Lists (e.g. sharding rules read from YAML) -> tuples, so they can key a cache."""
    return tuple(_frozen(v) for v in x) if isinstance(x, (list, tuple)) else x


def eos_ids_of(config: Qwen2Config, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids from the model config and the tokenizer (union; empty if neither has one)."""
    ids = list(config.eos_ids)
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if tok_eos is not None and tok_eos not in ids:
        ids.append(int(tok_eos))
    return tuple(ids)


class Sampler:
    """Generates from a Qwen2 model; see the module docstring.

    params, config: the model. tokenizer: a transformers tokenizer, or None when
    prompts are token ids (then outputs carry no text and stop strings are refused).
    mesh: optional jax Mesh; params, cache and kernels are laid out with
    `r1ci_jax.sharding` rules. max_len: most tokens a row may hold (prompt,
    generated and appended). kernels: "auto" | "pallas" | "reference" (see
    `Engine`). chunk_size: decode steps per device call (stop strings are checked
    between chunks). append_chunk: widest append processed in one call (a power of
    two); the cache has that much slack past max_len because a padded append
    writes its full width. eos_token_ids: override the config/tokenizer EOS ids.
    """

    def __init__(self, params: Params, config: Qwen2Config, tokenizer: Any = None, mesh: Any = None,
                 max_len: int = 2048, *, kernels: str = "auto", chunk_size: int = 32, append_chunk: int = 128,
                 eos_token_ids: Sequence[int] | None = None, rules: Any = None):
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 (one prompt token and one new token), got {max_len}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if append_chunk < _MIN_BUCKET or append_chunk & (append_chunk - 1):
            raise ValueError(f"append_chunk must be a power of two >= {_MIN_BUCKET}, got {append_chunk}")
        self.config = config
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.rules = rules
        self.max_len = max_len
        self.chunk_size = chunk_size
        self.append_chunk = append_chunk
        self.cache_len = -(-(max_len + append_chunk) // 64) * 64  # multiple of 64 for the GPU kernel
        self.eos_token_ids = tuple(eos_token_ids) if eos_token_ids is not None else eos_ids_of(config, tokenizer)
        self.engine = Engine.shared(config, kernels, mesh, _frozen(rules))
        self.params = self._place_params(params)
        # (weak refs to the leaves of the params last decoded with, engine.prepare of them).
        self._prepared: tuple[list[weakref.ref], Any] | None = None
        # Totals over this sampler's life (the state carries per-batch counts).
        self.stats = {"prompt_tokens": 0, "appended_tokens": 0, "decoded_tokens": 0, "decode_calls": 0}

    # ------------------------------------------------------------------ public API

    def generate(self, prompts: Sequence[Prompt], sampling_params: SamplingParams | None = None,
                 params: Params | None = None) -> list[GenerationOutput]:
        """Generate for each prompt (text or token ids, any lengths) until it stops."""
        outputs, _ = self.decode(self.start(prompts, sampling_params, params), params)
        return outputs

    def start(self, prompts: Sequence[Prompt], sampling_params: SamplingParams | None = None,
              params: Params | None = None) -> SamplerState:
        """Prefill the batch once; returns a state ready for `decode`."""
        sampling = sampling_params or SamplingParams()
        if isinstance(prompts, (str, bytes)) or not len(prompts):
            raise ValueError("prompts must be a non-empty list of strings or token-id lists")
        ids = [self._prompt_ids(p, i) for i, p in enumerate(prompts)]
        batch = len(ids)
        cache = self._init_cache(batch)
        # The last prompt token stays pending: the first decode step feeds it.
        bodies = [p[:-1] for p in ids]
        cache = self._extend_rows(params, cache, bodies, cap=self.cache_len)
        n = sum(len(b) for b in bodies)
        self.stats["prompt_tokens"] += n
        return SamplerState(
            cache=cache, rng=jax.random.PRNGKey(sampling.seed),
            pending=np.array([p[-1] for p in ids], np.int32), done=np.zeros((batch,), bool),
            segment_tokens=np.zeros((batch,), np.int32), sampling=sampling,
            finish_reasons=(None,) * batch, stop_reasons=(None,) * batch, segment_ids=((),) * batch,
            prompt_tokens=n)

    def decode(self, state: SamplerState, params: Params | None = None,
               max_steps: int | None = None) -> tuple[list[GenerationOutput], SamplerState]:
        """Decode every unfinished row until it stops (or for at most max_steps steps).

        Returns per row the tokens generated in this call and the new state.
        """
        return self._decode(state, params, max_steps)

    def continue_(self, state: SamplerState, appended: Mapping[int, Sequence[int] | str],
                  sampling_params: SamplingParams | None = None, params: Params | None = None,
                  max_steps: int | None = None) -> tuple[list[GenerationOutput], SamplerState]:
        """Append tokens (e.g. a tool's output; text is tokenized) to chosen rows and resume.

        Appended rows become active again (their budget restarts); rows neither
        appended to nor unfinished stay paused. Only the appended tokens (and each
        row's pending last token) are run through the model: no re-prefill.
        An empty list reactivates a row without appending.
        """
        B = state.batch_size
        lengths = state.lengths  # context tokens per row, pending included
        feeds: list[list[int]] = [[] for _ in range(B)]
        pending = state.pending.copy()
        done = state.done.copy()
        segment_tokens = state.segment_tokens.copy()
        finish, reasons, segments = list(state.finish_reasons), list(state.stop_reasons), list(state.segment_ids)
        total = 0
        for row, tokens in appended.items():
            if not isinstance(row, (int, np.integer)) or not 0 <= row < B:
                raise ValueError(f"continue_: row {row!r} is not a row index of this batch of {B}")
            ids = self._encode(tokens, f"appended tokens for row {row}") if isinstance(tokens, str) \
                else self._check_ids(tokens, f"appended tokens for row {row}", allow_empty=True)
            if lengths[row] + len(ids) >= self.max_len:
                raise ValueError(f"continue_: appending {len(ids)} tokens to row {row} ({lengths[row]} tokens) "
                                 f"leaves no room to generate within max_len={self.max_len}")
            if ids:
                feeds[row] = [int(pending[row])] + ids[:-1]
                pending[row] = ids[-1]
                total += len(ids)
            done[row] = False
            segment_tokens[row] = 0
            finish[row], reasons[row], segments[row] = None, None, ()
        cache = self._extend_rows(params, state.cache, feeds, cap=self.append_chunk)
        self.stats["appended_tokens"] += total
        state = state.replace(cache=cache, pending=pending, done=done, segment_tokens=segment_tokens,
                              finish_reasons=tuple(finish), stop_reasons=tuple(reasons),
                              segment_ids=tuple(segments), appended_tokens=state.appended_tokens + total,
                              sampling=sampling_params or state.sampling)
        return self._decode(state, params, max_steps)

    # ------------------------------------------------------------------ decode loop (host side)

    def _decode(self, state: SamplerState, params: Params | None,
                max_steps: int | None) -> tuple[list[GenerationOutput], SamplerState]:
        sp = state.sampling
        if sp.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this Sampler has none (use stop_token_ids)")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be positive or None, got {max_steps}")
        params = self.params if params is None else params
        host_weights = self._prepare(params)
        B = state.batch_size
        spec = DecodeSpec(chunk=self.chunk_size, max_len=self.max_len, greedy=sp.greedy,
                          use_top_k=sp.top_k > 0, use_top_p=sp.top_p < 1.0,
                          top_k_bound=sp.top_k if 0 < sp.top_k < self.config.vocab_size else None)
        temperature = jnp.full((B,), sp.temperature, jnp.float32)
        top_k = jnp.full((B,), sp.top_k, jnp.int32)
        top_p = jnp.full((B,), sp.top_p, jnp.float32)
        eos_ids = jnp.asarray(_padded_ids(() if sp.ignore_eos else self.eos_token_ids))
        stop_ids = jnp.asarray(_padded_ids(sp.stop_token_ids))

        cache, rng = state.cache, state.rng
        pending, done, segment_tokens = state.pending.copy(), state.done.copy(), state.segment_tokens.copy()
        finish, reasons = list(state.finish_reasons), list(state.stop_reasons)
        segments = [list(s) for s in state.segment_ids]
        call_start = [len(s) for s in segments]  # this call's tokens start here in each segment
        call_logprobs: list[list[float]] = [[] for _ in range(B)]
        text_ends: dict[int, int] = {}  # rows cut by a stop string: end of the kept segment text
        steps_left = max_steps if max_steps is not None else np.inf
        decoded = 0
        while not done.all() and steps_left > 0:
            steps = int(min(self.chunk_size, steps_left))
            budget = (sp.max_new_tokens - segment_tokens).astype(np.int32)
            cache, rng, pending_dev, done_dev, out = self.engine.decode(
                params, cache, rng, pending, done, budget, temperature, top_k, top_p, eos_ids, stop_ids,
                steps, spec, host_weights)
            out, pending, done = jax.device_get((out, pending_dev, done_dev))
            pending, done = np.array(pending), np.array(done)
            steps_left -= steps
            decoded += int(out.counts.sum())
            lengths = None
            for b in np.nonzero(out.counts)[0]:
                n = int(out.counts[b])
                checked = len(segments[b])
                segments[b] += out.tokens[b, :n].tolist()
                call_logprobs[b] += out.logprobs[b, :n].tolist()
                segment_tokens[b] += n
                code = int(out.finish[b])
                if code != FINISH_NONE:
                    finish[b] = FINISH_REASONS[code]
                    reasons[b] = segments[b][-1] if code in (FINISH_EOS, FINISH_STOP) else None
                match = stop_strings.find_stop(self.tokenizer, segments[b], sp.stop, checked) if sp.stop else None
                if match is None:
                    continue
                drop = len(segments[b]) - match.keep
                if drop:
                    if lengths is None:
                        lengths = np.asarray(jax.device_get(cache["lengths"])).copy()
                    # The cache holds all kept tokens but the last, which becomes pending again.
                    lengths[b] -= drop
                    del segments[b][match.keep:]
                    del call_logprobs[b][len(call_logprobs[b]) - drop:]
                    segment_tokens[b] -= drop
                    pending[b] = segments[b][-1]
                done[b] = True
                finish[b], reasons[b] = "stop", match.stop
                text_ends[b] = match.text_end
            if lengths is not None:
                cache = self.engine.truncate(cache, jnp.asarray(lengths, jnp.int32))
        self.stats["decoded_tokens"] += decoded
        self.stats["decode_calls"] += 1

        outputs = []
        for b in range(B):
            new_ids = segments[b][call_start[b]:]
            outputs.append(GenerationOutput(
                token_ids=new_ids, text=self._call_text(segments[b], call_start[b], text_ends.get(b)),
                logprobs=call_logprobs[b] if sp.return_logprobs else None,
                finish_reason=finish[b] if done[b] else None, stop_reason=reasons[b] if done[b] else None))
        state = state.replace(cache=cache, rng=rng, pending=pending, done=done, segment_tokens=segment_tokens,
                              finish_reasons=tuple(finish), stop_reasons=tuple(reasons),
                              segment_ids=tuple(tuple(s) for s in segments),
                              decoded_tokens=state.decoded_tokens + decoded)
        return outputs, state

    def _call_text(self, segment: list[int], call_start: int, text_end: int | None) -> str | None:
        """Text of segment[call_start:], cut at text_end (an offset in the segment's text)."""
        if self.tokenizer is None:
            return None
        if text_end is None:
            return stop_strings.decode(self.tokenizer, segment[call_start:])
        before = stop_strings.decode(self.tokenizer, segment[:call_start]) if call_start else ""
        return stop_strings.decode(self.tokenizer, segment)[len(before):text_end]

    # ------------------------------------------------------------------ helpers

    def _extend_rows(self, params: Params | None, cache: dict, rows: list[list[int]], cap: int) -> dict:
        """Run each row's tokens through the model into its cache, in pieces of <= cap tokens."""
        params = self.params if params is None else params
        longest = max((len(r) for r in rows), default=0)
        for start in range(0, longest, cap):
            pieces = [r[start:start + cap] for r in rows]
            width = _bucket(max(len(p) for p in pieces), cap)
            tokens = np.zeros((len(rows), width), np.int32)
            mask = np.zeros((len(rows), width), np.int32)
            for b, piece in enumerate(pieces):
                tokens[b, :len(piece)] = piece
                mask[b, :len(piece)] = 1
            cache = self.engine.extend(params, cache, jnp.asarray(tokens), jnp.asarray(mask))
        return cache

    def _init_cache(self, batch: int) -> dict:
        if self.mesh is None:
            return init_cache(self.config, batch, self.cache_len)
        from r1ci_jax.sharding import cache_shardings
        shardings = cache_shardings(self.config, self.mesh, batch, self.cache_len, self.rules)
        return jax.jit(init_cache, static_argnums=(0, 1, 2), out_shardings=shardings)(
            self.config, batch, self.cache_len)

    def _prepare(self, params: Params) -> Any:
        """engine.prepare(params), reused while the same arrays are decoded with (this
        sampler's params, or the same per-call params over several `continue_` rounds).
        Params with any other leaf, even in the same dict, are prepared afresh. The entry
        holds its params only weakly: once they are freed (a training step replaced
        them) it is dropped with its copy of the weights."""
        if not self.engine.host_layout:
            return None
        leaves = jax.tree.leaves(params)
        cached = self._prepared
        if cached is not None and len(cached[0]) == len(leaves) and all(
                ref() is leaf for ref, leaf in zip(cached[0], leaves)):
            return cached[1]
        self._prepared = None  # drop the old copy before making the new one
        weights = self.engine.prepare(params)
        sampler = weakref.ref(self)

        def forget(_):
            owner = sampler()
            if owner is not None and owner._prepared is entry:
                owner._prepared = None

        try:
            entry = ([weakref.ref(leaf, forget) for leaf in leaves], weights)
        except TypeError:  # a leaf that takes no weak reference (a Python scalar): no cache
            return weights
        self._prepared = entry
        return weights

    def _place_params(self, params: Params) -> Params:
        if self.mesh is None:
            return params
        from r1ci_jax.sharding import param_shardings
        return jax.device_put(params, param_shardings(self.config, self.mesh, self.rules))

    def _prompt_ids(self, prompt: Prompt, index: int) -> list[int]:
        what = f"prompt {index}"
        ids = self._encode(prompt, what) if isinstance(prompt, str) else self._check_ids(prompt, what)
        if len(ids) >= self.max_len:
            raise ValueError(f"{what} has {len(ids)} tokens; max_len={self.max_len} leaves no room to "
                             f"generate (prompts must be shorter than max_len)")
        return ids

    def _encode(self, text: str, what: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"{what} is text but this Sampler has no tokenizer; pass token ids")
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if not ids:
            raise ValueError(f"{what} is empty ({text!r} encodes to no tokens)")
        return ids

    def _check_ids(self, ids: Sequence[int], what: str, allow_empty: bool = False) -> list[int]:
        try:
            out = [int(t) for t in ids]
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a string or a list of token ids, got {type(ids).__name__}") from None
        if not out and not allow_empty:
            raise ValueError(f"{what} is empty")
        bad = [t for t in out if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"{what} has token ids outside [0, {self.config.vocab_size}): {bad[:5]}")
        return out
