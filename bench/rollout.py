"""Rollout overlap: half the rows run code that sleeps 0.5 s while the others decode.

    python bench/rollout.py [--rows 8] [--tokens 192] [--call-at 32]

The decode work is real (a 4-layer Qwen2 in the real Sampler, one chunk of steps at a
time); which text each row writes is scripted, so that exactly half the rows call code
(after `--call-at` tokens) and the rest never do. Prints the wall time of the rollout
with code against the same decode without code, and the ratio to
max(decode time, exec time); the target is <= 1.2.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from r1ci_jax.executor import CodeExecutor  # noqa: E402
from r1ci_jax.models.qwen2 import Qwen2Config, init_params  # noqa: E402
from r1ci_jax.rollout import RolloutConfig, run_rollout  # noqa: E402
from r1ci_jax.sampling import Sampler, SamplingParams  # noqa: E402
from r1ci_jax.sampling.state import GenerationOutput  # noqa: E402
from r1ci_jax.tokenizer import train_tokenizer  # noqa: E402

SLEEP_CODE = "```python\nimport time\ntime.sleep(0.5)\nprint(7)\n```\n"


class _State(dict):
    """The scripted rows' progress plus the real sampler state (what the rollout reads)."""

    @property
    def lengths(self):
        return self["real"].lengths

    @property
    def done(self):
        return self["done"]

    def replace(self, done):
        return _State(self, done=done)


class ScriptDrivenSampler:
    """Real decode compute, scripted text: every call runs the real sampler for the same
    rows and steps, then reports the scripted tokens of those rows."""

    def __init__(self, real: Sampler, tokenizer, scripts: list[list[list[int]]], stop_turns: list[list[str | None]]):
        self.real, self.tokenizer, self.max_len = real, tokenizer, real.max_len
        self.scripts, self.stop_turns = scripts, stop_turns

    def start(self, prompts, sampling, params=None):
        B = len(prompts)
        real = self.real.start(prompts, SamplingParams(max_new_tokens=4096, temperature=0, ignore_eos=True,
                                                       return_logprobs=True))
        return _State(real=real, turn=[0] * B, pos=[0] * B, done=np.zeros(B, bool))

    def _step(self, state, real_call, max_steps):
        real = state["real"].replace(done=state["done"].copy())
        _, real = real_call(real, max_steps)
        outs = []
        for r in range(len(state["done"])):
            if state["done"][r]:
                outs.append(GenerationOutput([], "", [], None))
                continue
            ids = self.scripts[r][state["turn"][r]]
            chunk = ids[state["pos"][r]:state["pos"][r] + max_steps]
            state["pos"][r] += len(chunk)
            reason = stop = None
            if state["pos"][r] == len(ids):
                stop = self.stop_turns[r][state["turn"][r]]
                reason = "stop" if stop else "eos"
                state["done"][r] = True
                state["turn"][r] += 1
                state["pos"][r] = 0
            outs.append(GenerationOutput(chunk, None, [-1.0] * len(chunk), reason, stop))
        state["real"] = real
        return outs, state

    def decode(self, state, params=None, max_steps=None):
        return self._step(state, lambda real, n: self.real.decode(real, max_steps=n), max_steps)

    def continue_(self, state, appended, sampling_params=None, params=None, max_steps=None):
        for r in appended:
            state["done"][r] = False
        return self._step(state, lambda real, n: self.real.continue_(real, appended, max_steps=n), max_steps)


def build(args):
    corpus = [SLEEP_CODE, "Code Execution Results:\n7\n", "<<<7>>>", "thinking about the problem " * 4] * 20
    tokenizer = train_tokenizer(corpus, vocab_size=400, extra_tokens=["```python\n", "```\n"])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_layers=4,
                         num_heads=8, num_kv_heads=2, rope_theta=10000.0)
    params = init_params(config, jax.random.PRNGKey(0))
    real = Sampler(params, config, tokenizer, max_len=1024)
    filler = tokenizer.encode("thinking about the problem ") * 200
    answer = tokenizer.encode("<<<7>>>")
    return tokenizer, real, filler, answer


def scripts_for(tokenizer, filler, answer, rows, tokens, call_at, with_code):
    code = tokenizer.encode(SLEEP_CODE)
    scripts, stops = [], []
    for r in range(rows):
        if with_code and r % 2 == 0:
            first = filler[:call_at - len(code)] + code
            rest = filler[:tokens - call_at - len(answer)] + answer
            scripts.append([first, rest])
            stops.append(["```\n", ">>>"])
        else:
            scripts.append([filler[:tokens - len(answer)] + answer])
            stops.append([">>>"])
    return scripts, stops


async def run(args):
    tokenizer, real, filler, answer = build(args)
    prompts = [tokenizer.encode("thinking about the problem")] * args.rows
    cfg = RolloutConfig(max_total_tokens=args.tokens + 256, chunk_steps=args.chunk, exec_timeout_s=5.0)
    scorer = [lambda a: float(a == "7")] * args.rows
    async with CodeExecutor(num_workers=args.rows // 2) as ex:
        results = {}
        for label, with_code in (("warmup", True), ("no_code", False), ("with_code", True)):
            scripts, stops = scripts_for(tokenizer, filler, answer, args.rows, args.tokens, args.call_at, with_code)
            sampler = ScriptDrivenSampler(real, tokenizer, scripts, stops)
            t = time.perf_counter()
            result = await run_rollout(sampler, ex, prompts, scorer, cfg)
            results[label] = (time.perf_counter() - t, result)
    no_code_s, _ = results["no_code"]
    with_code_s, with_code = results["with_code"]
    exec_s = 0.5
    bound = max(no_code_s, exec_s)
    m = with_code.metrics
    print(f"rows {args.rows}, {args.tokens} tokens each, half call code (sleep 0.5 s) after {args.call_at} tokens")
    print(f"decode without code: {no_code_s:.2f} s; with code: {with_code_s:.2f} s "
          f"(decode {m['decode_s']:.2f} s, waiting on code {m['exec_wait_s']:.2f} s, {m['exec_ok']:.0f} calls ok)")
    print(f"ratio with_code / max(decode, exec) = {with_code_s / bound:.2f}  (target <= 1.2)")
    print(f"reward {m['reward_mean']:.2f}, code calls/episode {m['code_calls_per_episode']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--call-at", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=8)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
