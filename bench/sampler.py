"""Generation throughput on CPU: our Sampler vs transformers `generate` vs a naive JAX loop.

    python bench/sampler.py [--batch 8 --prompt-len 128 --new-tokens 256 --repeat 3 --dtype float32]

One process, one random model (4 layers, hidden 512, vocab 32k) used by all three, with
weights and compute in --dtype for every contender (float32, or bfloat16 for both):
our params are exported with `save_hf` and loaded by transformers, so the greedy
outputs can be compared token for token. Tokens/s = batch * new tokens / wall time of
a whole generate call (prefill included, compile excluded: each contender runs once
to warm up). Ours and transformers alternate, `--repeat` times each; the median
counts (the machine may be shared). The naive loop (full forward over the whole
fixed-size sequence for every new token, no cache) runs `--naive-tokens` steps; its
per-step cost is constant, so its tokens/s stands for the full run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def build_model(args):
    from r1ci_jax.models.qwen2 import Qwen2Config, init_params
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                         rope_theta=10000.0, max_position_embeddings=4096, dtype=args.dtype,
                         param_dtype=args.dtype)
    return config, init_params(config, jax.random.PRNGKey(0))


def torch_model(config, params):
    import torch
    import transformers

    from r1ci_jax.checkpoint.hf import save_hf
    with tempfile.TemporaryDirectory() as d:
        save_hf(params, config, d)
        model = transformers.Qwen2ForCausalLM.from_pretrained(d, dtype=getattr(torch, config.dtype)).eval()
    model.generation_config.eos_token_id = None
    return model


def time_ours(sampler, prompts, sp) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    outs = sampler.generate(prompts, sp)
    return time.perf_counter() - start, [o.token_ids for o in outs]


def time_transformers(model, prompts, n, sample: bool) -> tuple[float, list[list[int]]]:
    import torch
    ids = torch.tensor(prompts, dtype=torch.long)
    kwargs = dict(do_sample=True, temperature=1.0, top_k=50, top_p=0.95) if sample else dict(do_sample=False)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             pad_token_id=0, **kwargs)
    return time.perf_counter() - start, out[:, ids.shape[1]:].tolist()


def time_naive(config, params, prompts, total_len: int, steps: int) -> float:
    """Seconds per new token-step of a cache-free loop over a fixed [B, total_len] buffer."""
    from r1ci_jax.models.qwen2 import forward

    @jax.jit
    def step(params, tokens, position):
        logits, _ = forward(params, config, tokens)  # causal: later pad slots do not matter
        nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, position - 1, 1, keepdims=False), -1)
        return jax.lax.dynamic_update_index_in_dim(tokens, nxt.astype(jnp.int32)[:, None], position, 1)

    tokens = np.zeros((len(prompts), total_len), np.int32)
    tokens[:, :len(prompts[0])] = prompts
    tokens = jnp.asarray(tokens)
    p = len(prompts[0])
    step(params, tokens, p).block_until_ready()  # compile
    start = time.perf_counter()
    for t in range(steps):
        tokens = step(params, tokens, p + t)
    tokens.block_until_ready()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1408)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="weights and compute of every contender")
    ap.add_argument("--naive-tokens", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--skip-sampled", action="store_true", help="only the greedy comparison")
    args = ap.parse_args()

    from r1ci_jax.sampling import Sampler, SamplingParams
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    config, params = build_model(args)
    prompts = np.random.RandomState(0).randint(2, args.vocab, (B, P)).tolist()
    model = torch_model(config, params)
    sampler = Sampler(params, config, None, max_len=P + N, chunk_size=args.chunk_size)
    print(f"jax {jax.__version__} on {jax.default_backend()}, {jax.device_count()} device(s); "
          f"kernels: attention={sampler.engine.attention_impl}, sampling={sampler.engine.sampling_impl}")
    print(f"config: layers={args.layers} hidden={args.hidden} mlp={args.intermediate} heads={args.heads}/"
          f"{args.kv_heads} vocab={args.vocab} {args.dtype}; batch={B} prompt={P} new={N}")

    modes = [("greedy", SamplingParams(max_new_tokens=N, temperature=0, ignore_eos=True), False)]
    if not args.skip_sampled:
        modes.append(("sampled T=1 top-k 50 top-p 0.95",
                      SamplingParams(max_new_tokens=N, temperature=1.0, top_k=50, top_p=0.95, ignore_eos=True),
                      True))
    results = {}
    for name, sp, sample in modes:
        start = time.perf_counter()
        _, ours_tokens = time_ours(sampler, prompts, sp)
        compile_s = time.perf_counter() - start
        time_transformers(model, prompts, 4, sample)  # warm-up
        ours_s, hf_s = [], []
        for _ in range(args.repeat):
            ours_s.append(time_ours(sampler, prompts, sp)[0])
            seconds, hf_tokens = time_transformers(model, prompts, N, sample)
            hf_s.append(seconds)
        ours_tps, hf_tps = B * N / statistics.median(ours_s), B * N / statistics.median(hf_s)
        results[name] = (ours_tps, hf_tps)
        print(f"[{name}] ours: {ours_tps:8.1f} tok/s (runs {', '.join(f'{s:.2f}' for s in ours_s)} s; "
              f"first call incl. compile {compile_s:.1f} s)")
        print(f"[{name}] transformers generate: {hf_tps:8.1f} tok/s (runs {', '.join(f'{s:.2f}' for s in hf_s)} s)")
        print(f"[{name}] ours / transformers: {ours_tps / hf_tps:.2f}x")
        if not sample:
            same = sum(a == b for a, b in zip(ours_tokens, hf_tokens))
            agree = np.mean([np.mean(np.equal(a, b)) for a, b in zip(ours_tokens, hf_tokens)])
            print(f"[{name}] greedy outputs identical for {same}/{B} rows ({agree:.1%} of tokens agree)")
    per_step = time_naive(config, params, prompts, P + N, args.naive_tokens)
    print(f"naive JAX loop without cache: {B / per_step:8.1f} tok/s ({per_step * 1e3:.0f} ms per step, "
          f"{args.naive_tokens} steps timed)")


if __name__ == "__main__":
    main()
