"""Multi-turn rollouts: the sampler and the code executor, overlapped.

The sampler decodes every active row in chunks of `chunk_steps` steps (in a worker
thread, so the event loop stays free). A row that closes a ```python block stops at
the stop string; its code goes to the executor at once (one task per call, session
per trajectory) and the row is paused while the other rows keep decoding. Between
chunks, finished executions are formatted, tokenized and appended to their rows'
KV caches with `Sampler.continue_` (no re-prefill), and those rows resume. When no
row is decoding the loop waits for the first execution to finish, never for all.

An episode ends at a final answer (<<<...>>>), EOS, `max_code_calls`, or
`max_total_tokens` of response. Token ids, masks and behaviour logprobs are recorded
as they are sampled or appended (see `episode.py`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from r1ci_jax.rollout.episode import Episode
from r1ci_jax.rollout.tool_output import result_text, tool_message_ids
from r1ci_jax.sampling import SamplingParams
from r1ci_jax.tasks.extract import extract_answer
from r1ci_jax.tasks.protocol import ANSWER_CLOSE, CODE_STOP, find_code_blocks

MODES = ("code", "text")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How episodes are run.

    mode: "code" runs code blocks in the executor; "text" never runs code (the
        text-only baseline): code blocks are plain text and do not stop decoding.
    max_code_calls: code executions per episode; the block that would exceed it ends
        the episode ("max_code_calls") without running.
    max_total_tokens: response tokens (sampled + tool output) per episode.
    max_tool_tokens: cap on one tool message, in tokens (marked when cut).
    mask_tool_tokens: False trains on tool output too (the paper's ablation).
    chunk_steps: decode steps between checks for finished executions (overlap grain).
    exec_timeout_s: per execution; session_per_episode keeps variables across an
        episode's calls (notebook-like), False runs each call fresh as in the paper.
    """
    mode: str = "code"
    max_code_calls: int = 8
    max_total_tokens: int = 1024
    max_tool_tokens: int = 256
    mask_tool_tokens: bool = True
    chunk_steps: int = 32
    exec_timeout_s: float = 10.0
    session_per_episode: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"RolloutConfig.mode={self.mode!r}; expected one of {MODES}")
        for name in ("max_code_calls", "max_total_tokens", "max_tool_tokens", "chunk_steps"):
            if getattr(self, name) < (0 if name == "max_code_calls" else 1):
                raise ValueError(f"RolloutConfig.{name} must be positive, got {getattr(self, name)}")

    def sampling_params(self) -> SamplingParams:
        stops = [ANSWER_CLOSE] + ([CODE_STOP] if self.mode == "code" else [])
        return SamplingParams(max_new_tokens=self.max_total_tokens, temperature=self.temperature,
                              top_k=self.top_k, top_p=self.top_p, stop=stops, seed=self.seed,
                              return_logprobs=True)


@dataclasses.dataclass
class RolloutResult:
    episodes: list[Episode]
    metrics: dict[str, float]


@dataclasses.dataclass
class _Row:
    episode: Episode
    segment: list[int] = dataclasses.field(default_factory=list)  # ids sampled since last (re)start
    decoding: bool = True
    executing: asyncio.Task | None = None
    done: bool = False


async def run_rollout(sampler: Any, executor: Any, prompts: Sequence[Sequence[int]],
                      scorers: Sequence[Callable[[str | None], float]], config: RolloutConfig,
                      group_ids: Sequence[int] | None = None, params: Any = None,
                      session_prefix: str = "ep") -> RolloutResult:
    """Run one episode per prompt (token ids); score each with its scorer(answer) -> reward.

    sampler: a `sampling.Sampler` (its tokenizer formats tool messages);
    executor: a started `executor.CodeExecutor` (unused, may be None, in text mode).
    """
    if len(scorers) != len(prompts):
        raise ValueError(f"run_rollout: {len(prompts)} prompts but {len(scorers)} scorers")
    if config.mode == "code" and executor is None:
        raise ValueError("run_rollout: mode='code' needs an executor")
    tokenizer = sampler.tokenizer
    if tokenizer is None:
        raise ValueError("run_rollout: the sampler needs a tokenizer to decode code and format tool output")
    group_ids = list(group_ids) if group_ids is not None else list(range(len(prompts)))
    rows = [_Row(Episode.start(p, g)) for p, g in zip(prompts, group_ids)]
    statuses: Counter[str] = Counter()
    timing = {"decode_s": 0.0, "wait_s": 0.0}
    sampling = config.sampling_params()
    decode = lambda fn, *a, **k: _timed(timing, "decode_s", asyncio.to_thread(fn, *a, **k))
    wall = time.perf_counter()

    state = await decode(sampler.start, [list(p) for p in prompts], sampling, params)
    outs, state = await decode(sampler.decode, state, params, max_steps=config.chunk_steps)
    try:
        while True:
            state = _absorb(rows, outs, state, config, executor, statuses, tokenizer, session_prefix)
            if all(r.done for r in rows):
                break
            appends = _collect_finished(rows, config, statuses, tokenizer, sampler.max_len, state)
            if appends:
                outs, state = await decode(sampler.continue_, state, appends, params=params,
                                           max_steps=config.chunk_steps)
            elif any(r.decoding for r in rows):
                outs, state = await decode(sampler.decode, state, params, max_steps=config.chunk_steps)
            else:
                pending = [r.executing for r in rows if r.executing is not None]
                if not pending:  # every row is finished or paused with nothing running
                    break
                t = time.perf_counter()
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                timing["wait_s"] += time.perf_counter() - t
                outs = None
    finally:
        for r in rows:
            if r.executing is not None and not r.executing.done():
                r.executing.cancel()
        if config.mode == "code" and config.session_per_episode:
            for i in range(len(rows)):
                await executor.close_session(f"{session_prefix}-{i}")

    for r, scorer in zip(rows, scorers):
        e = r.episode
        e.response_text = tokenizer.decode(e.tokens[e.prompt_len:], skip_special_tokens=True)
        e.answer = extract_answer(e.model_text)
        e.reward = float(scorer(e.answer))
    episodes = [r.episode for r in rows]
    return RolloutResult(episodes, _metrics(episodes, statuses, timing, time.perf_counter() - wall))


async def _timed(timing: dict[str, float], key: str, awaitable: Any) -> Any:
    t = time.perf_counter()
    try:
        return await awaitable
    finally:
        timing[key] += time.perf_counter() - t


def _finish(row: _Row, reason: str) -> None:
    row.done, row.decoding = True, False
    row.episode.finish_reason = reason


def _absorb(rows: list[_Row], outs: Any, state: Any, config: RolloutConfig, executor: Any,
            statuses: Counter, tokenizer: Any, session_prefix: str) -> Any:
    """Record each row's new tokens; launch code of rows that closed a block; end rows."""
    if outs is None:
        return state
    stop_rows: list[int] = []
    for i, (row, out) in enumerate(zip(rows, outs)):
        if row.done or not row.decoding:
            continue
        ids = list(out.token_ids)
        if ids:
            row.episode.add_sampled(ids, out.logprobs)
            row.segment.extend(ids)
        reason = out.finish_reason
        if reason is None:
            if row.episode.response_len >= config.max_total_tokens:
                _finish(row, "max_tokens")
                stop_rows.append(i)
            continue
        text = tokenizer.decode(row.segment, skip_special_tokens=True)
        row.episode.model_text += text
        row.segment = []
        if reason == "stop" and out.stop_reason == CODE_STOP and config.mode == "code":
            blocks = find_code_blocks(text)
            if not blocks:  # the stop string closed something that was not a python block
                _finish(row, "stop")
            elif row.episode.code_calls >= config.max_code_calls:
                _finish(row, "max_code_calls")
            elif row.episode.response_len >= config.max_total_tokens:
                _finish(row, "max_tokens")
            else:
                row.episode.code_calls += 1
                row.decoding = False
                session = f"{session_prefix}-{i}" if config.session_per_episode else None
                row.executing = asyncio.ensure_future(
                    executor.run(blocks[-1], session=session, timeout_s=config.exec_timeout_s))
        elif reason == "stop" and out.stop_reason == ANSWER_CLOSE:
            _finish(row, "answer")
        else:
            _finish(row, "max_tokens" if reason == "length" else reason)
    if stop_rows:  # rows past the token budget stop costing decode steps
        done = state.done.copy()
        done[stop_rows] = True
        state = state.replace(done=done)
    return state


def _collect_finished(rows: list[_Row], config: RolloutConfig, statuses: Counter, tokenizer: Any,
                      max_len: int, state: Any) -> dict[int, list[int]]:
    """Tool messages of finished executions, by row, ready for `continue_`."""
    appends: dict[int, list[int]] = {}
    lengths = None
    for i, row in enumerate(rows):
        task = row.executing
        if task is None or not task.done():
            continue
        row.executing = None
        result = task.result()
        statuses[result.status] += 1
        row.episode.exec_statuses.append(result.status)
        budget = config.max_total_tokens - row.episode.response_len
        if lengths is None:
            lengths = state.lengths
        room = max_len - int(lengths[i]) - 2  # leave room for at least one sampled token
        cap = min(config.max_tool_tokens, budget - 1, room)
        body = result_text(result, config.exec_timeout_s)
        try:
            ids = tool_message_ids(tokenizer, body, cap) if cap > 0 else None
        except ValueError:
            ids = None
        if not ids:
            _finish(row, "max_tokens")
            continue
        row.episode.add_appended(ids)
        row.episode.model_text += "\n"  # keeps answers of separate turns apart
        row.decoding = True
        appends[i] = ids
    return appends


def _metrics(episodes: list[Episode], statuses: Counter, timing: dict[str, float], wall: float) -> dict[str, float]:
    n = len(episodes)
    out = {
        "reward_mean": float(np.mean([e.reward for e in episodes])),
        "code_calls_per_episode": float(np.mean([e.code_calls for e in episodes])),
        "answered_fraction": float(np.mean([e.answer is not None for e in episodes])),
        "tokens_sampled": float(sum(e.num_sampled for e in episodes)),
        "tokens_appended": float(sum(e.num_appended for e in episodes)),
        "decode_s": timing["decode_s"], "exec_wait_s": timing["wait_s"], "wall_s": wall,
        "episodes": float(n),
    }
    calls = sum(statuses.values())
    for status in ("ok", "error", "timeout", "memory", "crashed"):
        out[f"exec_{status}"] = float(statuses.get(status, 0))
    out["exec_failure_rate"] = float((calls - statuses.get("ok", 0)) / calls) if calls else 0.0
    for reason, count in Counter(e.finish_reason for e in episodes).items():
        out[f"finish_{reason}"] = float(count)
    return out
