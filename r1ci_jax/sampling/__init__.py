"""Batched sampling with a KV cache, an on-device decode loop, exact stop strings and resume.

    from r1ci_jax.sampling import Sampler, SamplingParams

Design (details in each module):
- `sampler.Sampler`: one jitted prefill over the padded batch, then decode chunks of
  `chunk_size` steps in a `lax.while_loop` on device (no host round trip per token);
  fixed-shape KV cache with per-row lengths; compiled programs shared per model.
- `state.SamplerState`: the resumable state (a pytree). The cache holds each row's
  context except its last token (`pending`), so a resume feeds pending + appended
  tokens and nothing else, and cutting a row back is a length change.
- Stop strings (`stops`): matched exactly on the host between chunks on the decoded
  text; the row keeps the token in which the string ends (possibly a larger token)
  and its cache is rolled back to it; the returned text ends right after the string.
  EOS / stop token ids stop rows on device.
- Logprobs: of the sampled token under softmax(logits / temperature) over the FULL
  vocabulary (top-k / top-p only choose the token), raw log_softmax when greedy:
  what the GRPO loss recomputes.
- Kernels (`r1ci_jax.kernels`): ragged decode attention and fused sampling, Pallas
  on TPU / GPU, plain JAX elsewhere; `Sampler(kernels="pallas" | "reference")`
  forces either.
"""
from r1ci_jax.sampling.params import SamplingParams
from r1ci_jax.sampling.sampler import Sampler
from r1ci_jax.sampling.state import GenerationOutput, SamplerState

__all__ = ["Sampler", "SamplingParams", "SamplerState", "GenerationOutput"]
