"""GRPO train-step throughput: our jitted JAX step vs a straightforward PyTorch one.

    python bench/train_step.py [--batch 8] [--length 256] [--hidden 128] [--layers 4] [--vocab 2048]

Both sides run, in this process on the CPU in float32, the same update on the same
tiny Qwen2 model (our params copied into transformers' Qwen2ForCausalLM): policy
forward at temperature 1, per-token logprobs and entropy, reference forward, the GRPO
loss (clip 0.2, k3 KL 0.001 clamped, entropy 0.001, token-mean), backward, global-norm
clipping and one AdamW update. Tokens/s = batch x length / median step time. No MFU
here: there is no accelerator on the dev VM.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--single-thread" in sys.argv:  # must be set before jax starts its CPU client
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from r1ci_jax.checkpoint.hf import hf_tensors  # noqa: E402
from r1ci_jax.models.qwen2 import Qwen2Config  # noqa: E402
from r1ci_jax.rl.config import GRPOLossConfig  # noqa: E402
from r1ci_jax.rl.train_step import make_grpo_step  # noqa: E402
from r1ci_jax.train.model import random_host_params  # noqa: E402
from r1ci_jax.train.optim import OptimizerConfig, make_optimizer  # noqa: E402
from r1ci_jax.train.state import create_train_state  # noqa: E402

LOSS = GRPOLossConfig(clip_eps=0.2, kl_coef=0.001, kl_clamp=10.0, entropy_coef=0.001, temperature=1.0,
                      logprob_chunk=256)
OPT = OptimizerConfig(learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0, decay="constant")


def make_batch(config: Qwen2Config, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (batch, length)).astype(np.int32)
    attention = np.ones((batch, length), np.int32)
    loss_mask = np.zeros((batch, length), np.float32)
    loss_mask[:, length // 8:] = 1.0                 # prompt first ...
    loss_mask[:, length // 2:length // 2 + 16] = 0.0  # ... and a tool-output span
    old = np.where(loss_mask > 0, -np.log(config.vocab_size) + rng.normal(0, 0.05, (batch, length)), 0.0)
    return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask,
            "old_logprobs": old.astype(np.float32), "advantages": rng.normal(size=batch).astype(np.float32)}


def time_interleaved(fns: dict, reps: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Warm each up (compile), then alternate them rep by rep: load from other work on a
    shared machine then hits both sides alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def jax_step(config, host_params, batch):
    params = jax.tree.map(jnp.asarray, host_params)
    optimizer, _ = make_optimizer(OPT, 1000)
    step = make_grpo_step(config, LOSS, optimizer, num_mini_batches=1, num_micro_batches=1,
                          recompute_old_logprobs=False, donate=True)
    ref = jax.tree.map(jnp.copy, params)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    holder = {"state": create_train_state(params, optimizer, 0)}
    losses = []

    def run():
        holder["state"], metrics = step(holder["state"], ref, device_batch)
        losses.append(float(metrics["loss"]))  # syncs
    return run, losses


def torch_step(config, host_params, batch):
    import torch
    import transformers
    torch.manual_seed(0)
    hf = config.to_hf(torch_dtype="float32")
    hf_config = transformers.Qwen2Config(**{k: v for k, v in hf.items() if k not in ("architectures", "dtype")})
    hf_config._attn_implementation = "sdpa"
    model = transformers.Qwen2ForCausalLM(hf_config).float()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf_tensors(host_params, config)},
                          strict=True)
    ref_model = transformers.Qwen2ForCausalLM(hf_config).float().eval()
    ref_model.load_state_dict(model.state_dict())
    decay = [p for n, p in model.named_parameters() if not (n.endswith("norm.weight") or n.endswith("bias"))]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("norm.weight") or n.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPT.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=OPT.learning_rate, eps=OPT.eps)
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    tokens = t["tokens"].long()
    mask = t["loss_mask"]
    losses = []

    def token_logprobs(m, with_entropy):
        logits = m(input_ids=tokens, attention_mask=t["attention_mask"]).logits[:, :-1].float() / LOSS.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        lp = logp_all.gather(-1, tokens[:, 1:, None])[..., 0]
        lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
        if not with_entropy:
            return lp, None
        ent = -(logp_all.exp() * logp_all).sum(-1)
        return lp, torch.cat([torch.zeros_like(ent[:, :1]), ent], dim=1)

    def run():
        with torch.no_grad():
            ref_lp, _ = token_logprobs(ref_model, False)
        model.train()
        lp, ent = token_logprobs(model, True)
        ratio = torch.exp(torch.clamp(lp - t["old_logprobs"], -20, 20))
        adv = t["advantages"][:, None]
        pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - LOSS.clip_eps, 1 + LOSS.clip_eps))
        d = torch.clamp(ref_lp - lp, -20, 20)
        kl = torch.clamp(torch.exp(d) - d - 1, -LOSS.kl_clamp, LOSS.kl_clamp)
        n = mask.sum()
        loss = (pg * mask).sum() / n + LOSS.kl_coef * (kl * mask).sum() / n - LOSS.entropy_coef * (ent * mask).sum() / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPT.max_grad_norm)
        opt.step()
        losses.append(loss.item())

    return run, losses, torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--single-thread", action="store_true",
                    help="one thread per framework, timed in process CPU seconds: a per-core comparison "
                         "that other jobs on a shared machine barely disturb")
    args = ap.parse_args()
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                         num_layers=args.layers, num_heads=4, num_kv_heads=2, rope_theta=10000.0,
                         tie_word_embeddings=False)
    host_params = random_host_params(config, 0)
    batch = make_batch(config, args.batch, args.length)
    tokens = args.batch * args.length

    jax_run, jax_losses = jax_step(config, host_params, batch)
    torch_run, torch_losses, threads = torch_step(config, host_params, batch)
    if args.single_thread:
        import torch
        torch.set_num_threads(1)
        threads = 1
    clock = time.process_time if args.single_thread else time.perf_counter
    times = time_interleaved({"jax": jax_run, "torch": torch_run}, args.reps, clock)
    jax_s, torch_s = statistics.median(times["jax"]), statistics.median(times["torch"])
    jax_min, torch_min = min(times["jax"]), min(times["torch"])
    jax_loss, torch_loss = jax_losses[0], torch_losses[0]
    print(f"model {config.num_params() / 1e6:.2f}M params, batch {args.batch} x {args.length} tokens, "
          f"{os.cpu_count()} CPUs (torch threads {threads}), float32, "
          f"{'process CPU time, one thread each' if args.single_thread else 'wall time'}")
    print(f"first-step loss: jax {jax_loss:.6f}  torch {torch_loss:.6f}")
    print(f"{'impl':8s} {'median ms':>10s} {'tokens/s':>10s} {'best ms':>9s} {'tokens/s':>10s}")
    for name, med, best in (("jax", jax_s, jax_min), ("torch", torch_s, torch_min)):
        print(f"{name:8s} {med * 1e3:10.1f} {tokens / med:10.0f} {best * 1e3:9.1f} {tokens / best:10.0f}")
    print(f"speed-up jax / torch: median {torch_s / jax_s:.2f}x, best {torch_min / jax_min:.2f}x "
          f"(load average {os.getloadavg()[0]:.1f})")
    print(json.dumps({"jax_tokens_per_s": tokens / jax_s, "torch_tokens_per_s": tokens / torch_s,
                      "speedup_median": torch_s / jax_s, "speedup_best": torch_min / jax_min,
                      "jax_loss": jax_loss, "torch_loss": torch_loss}))


if __name__ == "__main__":
    main()
