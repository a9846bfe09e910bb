"""Multi-turn rollouts: scripted policies for the orchestration, a real tiny model for logprobs."""
from __future__ import annotations

import asyncio
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1ci_jax.executor import CodeExecutor
from r1ci_jax.rollout import RolloutConfig, episodes_to_batch, run_rollout
from r1ci_jax.rollout.tool_output import result_text
from r1ci_jax.sampling.state import GenerationOutput
from r1ci_jax.tasks.protocol import ANSWER_CLOSE, CODE_STOP, format_execution_results
from r1ci_jax.tokenizer import train_tokenizer

CODE = "```python\n{}\n```\n"
CORPUS = ["Compute 12 * 34.", CODE.format("print(12*34)"), "Code Execution Results:\n408\n", "<<<408>>>",
          "So the answer is", "import time\ntime.sleep(5)"] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=320, extra_tokens=["```python\n", "```\n"])


@pytest.fixture(scope="module")
def executor():
    loop = asyncio.new_event_loop()
    ex = CodeExecutor(num_workers=4, timeout_s=5.0)
    loop.run_until_complete(ex.start())
    yield loop, ex
    loop.run_until_complete(ex.close())
    loop.close()


# ----------------------------------------------------------------------------- scripted policy

@dataclasses.dataclass
class _State:
    lengths: np.ndarray
    done: np.ndarray
    turn: list[int]
    pos: list[int]
    seg: list[int]
    max_new: int

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


class ScriptedSampler:
    """A fake model: row r emits scripts[r][k] on its k-th activation, `max_steps` tokens a
    call, with the real sampler's contract (stop strings kept, per-call outputs, pause
    until `continue_`). Logprob of every emitted token: -0.5."""

    def __init__(self, tokenizer, scripts, max_len=4096):
        self.tokenizer, self.max_len = tokenizer, max_len
        self.turns = [[tokenizer.encode(t) for t in s] for s in scripts]
        self.texts = scripts
        self.calls = {"start": 0, "decode": 0, "continue_": 0}
        self.stops = ()

    def start(self, prompts, sampling, params=None):
        self.calls["start"] += 1
        self.stops = tuple(sampling.stop)
        B = len(prompts)
        return _State(np.array([len(p) for p in prompts]), np.zeros(B, bool), [0] * B, [0] * B, [0] * B,
                      sampling.max_new_tokens)

    def decode(self, state, params=None, max_steps=None):
        self.calls["decode"] += 1
        outs = []
        done = state.done.copy()
        for r in range(len(done)):
            if done[r] or state.turn[r] >= len(self.turns[r]):
                done[r] = True
                outs.append(GenerationOutput([], "", [], None))
                continue
            ids = self.turns[r][state.turn[r]]
            n = min(max_steps or len(ids), len(ids) - state.pos[r], state.max_new - state.seg[r])
            chunk = ids[state.pos[r]:state.pos[r] + n]
            state.pos[r] += n
            state.seg[r] += n
            state.lengths[r] += n
            reason, stop = None, None
            if state.pos[r] == len(ids):
                text = self.texts[r][state.turn[r]]
                stop = next((s for s in self.stops if text.endswith(s)), None)
                reason = "stop" if stop else "eos"
            elif state.seg[r] >= state.max_new:
                reason = "length"
            if reason:
                done[r] = True
                state.turn[r] += 1
                state.pos[r] = 0
            outs.append(GenerationOutput(chunk, self.tokenizer.decode(chunk), [-0.5] * len(chunk), reason, stop))
        return outs, state.replace(done=done)

    def continue_(self, state, appended, sampling_params=None, params=None, max_steps=None):
        self.calls["continue_"] += 1
        done = state.done.copy()
        for r, ids in appended.items():
            state.lengths[r] += len(ids)
            state.seg[r] = 0
            done[r] = False
        return self.decode(state.replace(done=done), params, max_steps)


def _run(executor, sampler, prompts, config, scorers=None):
    loop, ex = executor
    scorers = scorers or [lambda a: float(a == "408")] * len(prompts)
    return loop.run_until_complete(run_rollout(sampler, ex, prompts, scorers, config))


def test_scripted_episodes_masks_text_and_rewards(tokenizer, executor):
    scripts = [
        ["Compute it. " + CODE.format("print(12*34)"), "So the answer is <<<408>>>"],
        ["<<<407>>>"],  # answers at once, wrong
        [CODE.format("x = 12"), CODE.format("print(x*34)"), "<<<408>>>"],  # state across calls
    ]
    prompts = [tokenizer.encode("Compute 12 * 34.")] * 3
    sampler = ScriptedSampler(tokenizer, scripts)
    result = _run(executor, sampler, prompts, RolloutConfig(chunk_steps=3))
    e0, e1, e2 = result.episodes
    assert [e.reward for e in result.episodes] == [1.0, 0.0, 1.0]
    assert [e.code_calls for e in result.episodes] == [1, 0, 2]
    assert e2.exec_statuses == ["ok", "ok"] and e0.finish_reason == "answer"
    tool = format_execution_results("408")
    assert e0.response_text == scripts[0][0] + tool + scripts[0][1]
    assert e2.response_text == scripts[2][0] + format_execution_results("(no output)") + scripts[2][1] + tool \
        + scripts[2][2]
    tool_texts = [tool, "", format_execution_results("(no output)") + tool]
    for e, script, tool_text in zip(result.episodes, scripts, tool_texts):
        sampled = [t for t, s in zip(e.tokens, e.sampled) if s]
        assert sampled == [t for turn in script for t in tokenizer.encode(turn)]
        assert not any(e.sampled[:e.prompt_len])
        tool_ids = [t for t, s in zip(e.tokens[e.prompt_len:], e.sampled[e.prompt_len:]) if not s]
        assert tokenizer.decode(tool_ids) == tool_text
    batch = episodes_to_batch(result.episodes, pad_to=64, pad_id=tokenizer.pad_token_id)
    for i, e in enumerate(result.episodes):
        n = len(e.tokens)
        np.testing.assert_array_equal(batch.loss_mask[i, :n], np.array(e.sampled, np.float32))
        assert batch.loss_mask[i, n:].sum() == 0 and batch.attention_mask[i].sum() == n
        np.testing.assert_array_equal(batch.old_logprobs[i, :n], np.where(e.sampled, -0.5, 0.0))
    m = result.metrics
    assert m["exec_ok"] == 3 and m["code_calls_per_episode"] == 1.0 and m["reward_mean"] == pytest.approx(2 / 3)
    assert m["tokens_appended"] == sum(e.num_appended for e in result.episodes)


def test_max_code_calls_and_max_tokens_end_episodes(tokenizer, executor):
    loop_code = [CODE.format("print(1)")] * 5
    scripts = [loop_code, ["So the answer is " * 40]]
    prompts = [tokenizer.encode("Compute 12 * 34.")] * 2
    result = _run(executor, ScriptedSampler(tokenizer, scripts), prompts,
                  RolloutConfig(max_code_calls=2, max_total_tokens=60, chunk_steps=4))
    calls, long = result.episodes
    assert calls.code_calls == 2 and calls.finish_reason == "max_code_calls"
    assert calls.exec_statuses == ["ok", "ok"]
    assert long.finish_reason == "max_tokens" and long.response_len <= 60 + 4  # one chunk of overshoot at most
    assert result.metrics["finish_max_code_calls"] == 1


def test_timeout_becomes_a_tool_message_and_rows_finish_apart(tokenizer, executor):
    scripts = [[CODE.format("import time\ntime.sleep(5)"), "<<<408>>>"],
               ["<<<408>>>"],
               [CODE.format("raise ValueError('bad')"), "<<<1>>>"]]
    prompts = [tokenizer.encode("Compute 12 * 34.")] * 3
    sampler = ScriptedSampler(tokenizer, scripts)
    result = _run(executor, sampler, prompts, RolloutConfig(exec_timeout_s=0.5, chunk_steps=2))
    slow, fast, err = result.episodes
    assert slow.exec_statuses == ["timeout"] and slow.reward == 1.0
    assert "time limit of 0.5 s" in slow.response_text
    assert err.exec_statuses == ["error"] and "ValueError: bad" in err.response_text
    assert fast.finish_reason == "answer" and fast.code_calls == 0
    assert result.metrics["exec_timeout"] == 1 and result.metrics["exec_error"] == 1
    assert result.metrics["exec_failure_rate"] == 1.0
    assert result.metrics["exec_wait_s"] < 2.0  # waited for the 0.5 s timeout, not for the 5 s sleep


def test_text_mode_never_runs_code(tokenizer, executor):
    scripts = [[CODE.format("print(12*34)") + "<<<408>>>"]]
    result = _run(executor, ScriptedSampler(tokenizer, scripts), [tokenizer.encode("Compute 12 * 34.")],
                  RolloutConfig(mode="text"))
    (e,) = result.episodes
    assert e.code_calls == 0 and e.exec_statuses == [] and e.reward == 1.0 and e.num_appended == 0


def test_bad_rollout_configs():
    with pytest.raises(ValueError, match="mode='chat'"):
        RolloutConfig(mode="chat")
    with pytest.raises(ValueError, match="max_total_tokens must be positive"):
        RolloutConfig(max_total_tokens=0)


# ----------------------------------------------------------------------------- real tiny model

def _biased_model(tokenizer, favoured: dict[str, float]):
    """A random tiny Qwen2 whose next-token distribution leans to `favoured` token texts
    (so it writes code blocks and answers by chance) but still depends on the context."""
    from r1ci_jax.models.qwen2 import Qwen2Config, init_params
    V = len(tokenizer)
    config = Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                         num_kv_heads=2, rope_theta=10000.0, eos_token_id=tokenizer.eos_token_id)
    params = init_params(config, jax.random.PRNGKey(0))
    embed = np.asarray(params["embed"]).copy()
    embed[:, 0] = 3.0  # a constant direction in every token's embedding ...
    lm_head = 0.02 * np.random.RandomState(0).randn(V, 64).astype(np.float32)
    lm_head[:, 0] = -2.0
    for text, bias in favoured.items():  # ... read by the head as a fixed preference
        (tid,) = tokenizer.encode(text)
        lm_head[tid, 0] = bias
    params = {**params, "embed": jnp.asarray(embed), "lm_head": jnp.asarray(lm_head)}
    return config, params


def test_real_model_logprobs_and_masks_match_a_full_forward(tokenizer, executor):
    from r1ci_jax.rl.logprobs import token_logprobs
    from r1ci_jax.sampling import Sampler
    config, params = _biased_model(tokenizer, {"```python\n": 0.9, "```\n": 0.9, "print": 0.5, "4": 0.5,
                                               "<<<": 0.3, ">>>": 0.6})
    sampler = Sampler(params, config, tokenizer, max_len=256)
    prompts = [tokenizer.encode("Compute 12 * 34.")] * 6
    cfg = RolloutConfig(max_total_tokens=120, max_code_calls=3, chunk_steps=8, temperature=1.0, seed=3,
                        exec_timeout_s=2.0)
    result = _run(executor, sampler, prompts, cfg)
    episodes = result.episodes
    assert sum(e.code_calls for e in episodes) >= 2, [e.response_text for e in episodes]
    batch = episodes_to_batch(episodes, pad_id=tokenizer.pad_token_id)
    logp = np.asarray(token_logprobs(params, config, jnp.asarray(batch.tokens), jnp.asarray(batch.attention_mask),
                                     temperature=1.0))
    sel = batch.loss_mask > 0
    np.testing.assert_allclose(batch.old_logprobs[sel], logp[sel], atol=2e-4)
    for i, e in enumerate(episodes):  # tool segments are exactly the formatted executor outputs
        tool_ids = [t for t, s in zip(e.tokens[e.prompt_len:], e.sampled[e.prompt_len:]) if not s]
        assert tokenizer.decode(tool_ids).count("Code Execution Results:") == len(e.exec_statuses) == e.code_calls
        assert tokenizer.decode(e.tokens[e.prompt_len:]) == e.response_text


def test_unmasked_tool_tokens_enter_the_loss_with_their_logprobs(tokenizer, executor):
    scripts = [["Compute it. " + CODE.format("print(12*34)"), "<<<408>>>"]]
    result = _run(executor, ScriptedSampler(tokenizer, scripts), [tokenizer.encode("Compute 12 * 34.")],
                  RolloutConfig(chunk_steps=5))
    (e,) = result.episodes
    n = len(e.tokens)
    tool_lp = [np.linspace(-1, -2, n)]
    masked = episodes_to_batch(result.episodes)
    unmasked = episodes_to_batch(result.episodes, mask_tool_tokens=False, tool_logprobs=tool_lp)
    tool = np.zeros(n, bool)
    tool[e.prompt_len:] = ~np.array(e.sampled[e.prompt_len:])
    assert tool.sum() == e.num_appended > 0
    np.testing.assert_array_equal(unmasked.loss_mask[0], masked.loss_mask[0] + tool)
    np.testing.assert_allclose(unmasked.old_logprobs[0][tool], tool_lp[0][tool])
    np.testing.assert_array_equal(unmasked.old_logprobs[0][~tool], masked.old_logprobs[0][~tool])
    assert unmasked.loss_mask[0, :e.prompt_len].sum() == 0
    with pytest.raises(ValueError, match="needs tool_logprobs"):
        episodes_to_batch(result.episodes, mask_tool_tokens=False)
