"""Sampler end to end on a tiny random Qwen2 with a locally trained byte-level BPE tokenizer:
greedy parity with transformers, logprobs, exact stop strings, resume without re-prefill."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_models import make_hf_model
from r1ci_jax.checkpoint.hf import load_hf
from r1ci_jax.models.qwen2 import forward
from r1ci_jax.sampling import Sampler, SamplerState, SamplingParams

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "```python\nprint(sum(range(10)))\n```\n```output\n45\n```\n",
    "The answer is 42. Let me check with code.\n\n",
    "for i in range(3):\n    print(i * i)\n",
    "<<<final answer>>> the result is 7\n",
] * 20
MAX_LEN = 96


def build_tokenizer(vocab_size: int = 300):
    """A byte-level BPE trained on CORPUS, wrapped as a transformers fast tokenizer (id 0 = EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def save_tiny_model(path, tokenizer, **overrides):
    """A random tiny transformers Qwen2 whose vocab is the tokenizer's, saved with it."""
    model = make_hf_model(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                          bos_token_id=tokenizer.eos_token_id, **overrides)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer, tmp_path_factory):
    """(transformers model, config, params) of one tiny model shared by the module."""
    path = tmp_path_factory.mktemp("tiny_qwen2")
    model = save_tiny_model(path, tokenizer)
    config, params = load_hf(path)
    return model, config, params


@pytest.fixture(scope="module")
def sampler(tiny, tokenizer):
    _, config, params = tiny
    return Sampler(params, config, tokenizer, max_len=MAX_LEN, chunk_size=8)


def _prompts(config, lengths, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(1, config.vocab_size, n).tolist() for n in lengths]


_jit_forward = jax.jit(forward, static_argnums=1)


def _full_logits(params, config, ids):
    """Uncached forward over one whole sequence: f32[len(ids), V]. Right-padded to one
    fixed width (causal attention: pads after the sequence change nothing) so all
    calls share a compile."""
    padded = np.zeros((1, 2 * MAX_LEN), np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(_jit_forward(params, config, jnp.asarray(padded))[0][0, :len(ids)])


def _log_softmax(x):
    return np.asarray(jax.nn.log_softmax(jnp.asarray(x, jnp.float32), axis=-1))


def test_greedy_matches_transformers_generate(tiny, sampler):
    import torch
    model, config, _ = tiny
    prompts = _prompts(config, [5, 13, 1])
    n = 12
    outs = sampler.generate(prompts, SamplingParams(max_new_tokens=n, temperature=0))
    width = max(map(len, prompts))
    ids = torch.zeros((3, width), dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, p in enumerate(prompts):  # transformers wants left padding for generation
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        hf = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                            pad_token_id=config.eos_ids[0])[:, width:].tolist()
    eos = config.eos_ids[0]
    for out, ref in zip(outs, hf):
        if eos in ref:  # transformers pads a finished row with the pad id
            ref = ref[:ref.index(eos) + 1]
        assert out.token_ids == ref
        assert out.finish_reason == ("eos" if ref[-1] == eos else "length")


def test_sampled_logprobs_match_full_forward(tiny, sampler):
    _, config, params = tiny
    prompts = _prompts(config, [4, 11, 7], seed=1)
    sp = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=20, top_p=0.9, seed=5)
    outs = sampler.generate(prompts, sp)
    for prompt, out in zip(prompts, outs):
        assert len(out.logprobs) == len(out.token_ids) > 0
        logits = _full_logits(params, config, prompt + out.token_ids)
        steps = logits[len(prompt) - 1:len(prompt) - 1 + len(out.token_ids)]
        want = _log_softmax(steps / 0.7)[np.arange(len(out.token_ids)), out.token_ids]
        np.testing.assert_allclose(out.logprobs, want, atol=1e-4)
        ranks = (steps > steps[np.arange(len(steps)), out.token_ids][:, None]).sum(-1)
        assert (ranks < 20).all()  # every sampled token is inside the top-k
    again = sampler.generate(prompts, sp)
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]  # seeded


def _token_spans(tokenizer, ids):
    """Character end of each token's text in decode(ids[:i+1]) (prefix decodes)."""
    return [len(tokenizer.decode(ids[:i + 1])) for i in range(len(ids))]


def _pick_stops(tokenizer, ids, text):
    """(stop spanning >= 2 tokens, stop ending strictly inside a token), each first seen where it ends."""
    ends = _token_spans(tokenizer, ids)
    spanning = inside = None
    for i in range(2, len(ids) - 1):
        start_prev = ends[i - 2]  # start of token i-1
        candidate = text[start_prev + (1 if ends[i - 1] - start_prev > 1 else 0):ends[i]]
        if spanning is None and len(candidate) >= 2 and text.find(candidate) + len(candidate) == ends[i]:
            spanning = (candidate, i)
        width = ends[i] - ends[i - 1]
        candidate = text[max(0, ends[i - 1] - 2):ends[i - 1] + 1]  # ends 1 char into token i
        if inside is None and width >= 2 and text.find(candidate) + len(candidate) == ends[i - 1] + 1:
            inside = (candidate, i)
    return spanning, inside


def test_stop_strings_stop_exactly_and_are_kept_once(tiny, tokenizer, sampler):
    _, config, _ = tiny
    prompt = [tokenizer.encode("def add(a, b):\n")] * 3  # three rows: the batch shape of the other tests
    sp = SamplingParams(max_new_tokens=40, temperature=1.0, seed=11)
    free = sampler.generate(prompt, sp)[0]
    spanning, inside = _pick_stops(tokenizer, free.token_ids, free.text)
    assert spanning and inside, f"no usable stop strings in {free.text!r}"
    for stop, last in (spanning, inside):
        out = sampler.generate(prompt, SamplingParams(max_new_tokens=40, temperature=1.0, seed=11,
                                                      stop=["never-appears", stop]))[0]
        assert out.token_ids == free.token_ids[:last + 1], stop
        assert out.finish_reason == "stop" and out.stop_reason == stop
        assert out.text.endswith(stop) and out.text.count(stop) == 1
        assert out.text == free.text[:free.text.find(stop) + len(stop)]
        assert out.logprobs == free.logprobs[:last + 1]


def test_resume_equals_full_forward_without_reprefill(tiny, tokenizer, sampler):
    _, config, params = tiny
    prompts = _prompts(config, [6, 3, 10], seed=2)
    state = sampler.start(prompts, SamplingParams(max_new_tokens=6, temperature=0))
    assert state.prompt_tokens == sum(len(p) - 1 for p in prompts)
    first, state = sampler.decode(state)
    assert all(o.finish_reason in ("length", "eos") for o in first)
    tool = {0: [5, 6, 7, 8, 9], 2: tokenizer.encode("```output\n45\n```\n")}
    real_calls = []
    extend = sampler.engine.extend
    sampler.engine.extend = lambda p, c, t, m: real_calls.append(int(np.asarray(m).sum())) or extend(p, c, t, m)
    try:
        second, state = sampler.continue_(state, tool, SamplingParams(max_new_tokens=5, temperature=0))
    finally:
        sampler.engine.extend = extend
    # Only the appended tokens went through the model (each row's pending token leads its
    # chunk and the chunk's last token becomes pending): no prompt token was re-run.
    assert sum(real_calls) == sum(len(t) for t in tool.values())
    assert state.prompt_tokens == sum(len(p) - 1 for p in prompts)
    assert state.appended_tokens == sum(len(t) for t in tool.values())
    assert second[1].token_ids == [] and second[1].finish_reason == first[1].finish_reason  # paused
    lengths = state.lengths
    for row in (0, 2):
        seq = prompts[row] + first[row].token_ids + tool[row] + second[row].token_ids
        assert lengths[row] == len(seq)
        logits = _full_logits(params, config, seq)
        start = len(seq) - len(second[row].token_ids) - 1
        steps = logits[start:start + len(second[row].token_ids)]
        assert second[row].token_ids == np.argmax(steps, -1).tolist()
        np.testing.assert_allclose(second[row].logprobs, _log_softmax(steps)[np.arange(len(steps)),
                                                                          second[row].token_ids], atol=1e-4)
    assert lengths[1] == len(prompts[1]) + len(first[1].token_ids)


def test_resume_after_mid_chunk_stop_rolls_the_cache_back(tiny, tokenizer, sampler):
    _, config, params = tiny
    prompt = [tokenizer.encode("def add(a, b):\n")] * 3
    free = sampler.generate(prompt, SamplingParams(max_new_tokens=30, temperature=0))[0]
    stop = free.text[len(free.text) // 2:len(free.text) // 2 + 2]
    state = sampler.start(prompt, SamplingParams(max_new_tokens=30, temperature=0, stop=[stop]))
    out, state = sampler.decode(state)
    assert all(o.finish_reason == "stop" for o in out) and len(out[0].token_ids) < len(free.token_ids)
    tool = tokenizer.encode("\n45\n")
    more, state = sampler.continue_(state, {0: tool}, SamplingParams(max_new_tokens=4, temperature=0))
    seq = prompt[0] + out[0].token_ids + tool + more[0].token_ids
    assert state.lengths[0] == len(seq)
    logits = _full_logits(params, config, seq)
    steps = logits[len(seq) - 5:len(seq) - 1]
    assert more[0].token_ids == np.argmax(steps, -1).tolist()


def test_max_steps_pauses_and_resumes_identically(tiny, sampler):
    _, config, _ = tiny
    prompts = _prompts(config, [4, 9, 2], seed=3)
    sp = SamplingParams(max_new_tokens=10, temperature=0.8, seed=2)
    whole = sampler.generate(prompts, sp)
    state = sampler.start(prompts, sp)
    part1, state = sampler.decode(state, max_steps=3)
    assert all(o.finish_reason is None and len(o.token_ids) == 3 for o in part1)
    part2, state = sampler.decode(state)
    for w, a, b in zip(whole, part1, part2):
        assert a.token_ids + b.token_ids == w.token_ids
        assert b.finish_reason == w.finish_reason


def test_eos_stop_ids_and_context_limit(tiny, sampler):
    _, config, _ = tiny
    prompt = _prompts(config, [5, 5, 5], seed=4)
    free = sampler.generate(prompt, SamplingParams(max_new_tokens=8, temperature=0))[0]
    target = free.token_ids[3]
    first = free.token_ids.index(target)
    by_id = sampler.generate(prompt, SamplingParams(max_new_tokens=8, temperature=0, stop_token_ids=[target]))[0]
    assert by_id.token_ids == free.token_ids[:first + 1]
    assert by_id.finish_reason == "stop" and by_id.stop_reason == target
    eos_sampler = Sampler(sampler.params, config, None, max_len=MAX_LEN, eos_token_ids=[target])
    by_eos = eos_sampler.generate(prompt, SamplingParams(max_new_tokens=8, temperature=0))[0]
    assert by_eos.finish_reason == "eos" and by_eos.token_ids == free.token_ids[:first + 1]
    assert by_eos.text is None
    long_prompt = _prompts(config, [MAX_LEN - 3, 4, 4], seed=5)
    near_full = sampler.generate(long_prompt, SamplingParams(max_new_tokens=50, temperature=0, ignore_eos=True))[0]
    assert near_full.finish_reason == "length" and len(near_full.token_ids) == 3


def test_pallas_kernels_give_the_reference_tokens(tiny):
    _, config, params = tiny
    prompts = _prompts(config, [3, 8, 5], seed=6)
    sp = SamplingParams(max_new_tokens=6, temperature=0.7, top_k=20, top_p=0.9, seed=1)
    ref = Sampler(params, config, None, max_len=MAX_LEN, chunk_size=8, kernels="reference").generate(prompts, sp)
    pallas = Sampler(params, config, None, max_len=MAX_LEN, chunk_size=8, kernels="pallas")
    assert pallas.engine.attention_impl == "tpu" and pallas.engine.sampling_impl == "tpu"
    out = pallas.generate(prompts, sp)
    for a, b in zip(out, ref):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_other_or_mutated_params_are_never_decoded_with_a_stale_layout(tiny):
    """The CPU decode keeps a prepared (fused, packed) copy of the weights; per-call params,
    a return to the sampler's own, and an in-place edit of its params dict all decode
    exactly as a fresh Sampler on those params does."""
    from r1ci_jax.models.qwen2 import init_params
    _, config, params = tiny
    other = init_params(config, jax.random.PRNGKey(1))
    prompts = _prompts(config, [4, 9], seed=8)
    sp = SamplingParams(max_new_tokens=6, temperature=0)
    fresh = lambda p: [o.token_ids for o in Sampler(p, config, None, max_len=MAX_LEN, chunk_size=8).generate(
        prompts, sp)]
    want_own, want_other = fresh(params), fresh(other)
    assert want_own != want_other
    sampler = Sampler(dict(params), config, None, max_len=MAX_LEN, chunk_size=8)
    decode = lambda **kw: [o.token_ids for o in sampler.generate(prompts, sp, **kw)]
    assert decode() == want_own
    assert decode(params=other) == want_other
    assert decode() == want_own
    sampler.params.clear()
    sampler.params.update(other)
    assert decode() == want_other
    # The cached layout holds its params weakly: freed params take their prepared copy along.
    temporary = jax.tree.map(lambda a: a + 0, other)
    assert decode(params=temporary) == want_other and sampler._prepared is not None
    del temporary
    import gc
    gc.collect()
    assert sampler._prepared is None


def test_state_is_a_pytree(tiny, sampler):
    _, config, _ = tiny
    state = sampler.start(_prompts(config, [3, 5, 2]), SamplingParams(max_new_tokens=2))
    leaves = jax.tree.leaves(state)
    assert any(leaf is state.cache["k"] for leaf in leaves)
    rebuilt = jax.tree.unflatten(jax.tree.structure(state), leaves)
    assert isinstance(rebuilt, SamplerState) and rebuilt.sampling == state.sampling
    np.testing.assert_array_equal(rebuilt.pending, state.pending)


def test_decode_step_matches_model_forward_and_kernel_hook(tiny):
    """The sampler's carried-cache step (scanned, and unrolled on the fused CPU layout, with
    XLA's dot and with the packed C++ matmul when it is built) and the
    model's `decode_attention` hook (Pallas kernel, interpreted) all equal the model's own
    one-token cached forward."""
    import functools

    from r1ci_jax.kernels.decode_attention import decode_attention
    from r1ci_jax.models.qwen2 import init_cache
    import shutil

    from r1ci_jax.kernels import cpu_ffi
    from r1ci_jax.sampling.decode_step import decode_step, host_layout
    _, config, params = tiny
    prompt = np.asarray(_prompts(config, [6, 6, 6], seed=7), np.int32)
    mask = np.ones_like(prompt)
    mask[1, 4:] = 0
    _, cache = _jit_forward(params, config, jnp.asarray(prompt), None, init_cache(config, 3, 32), jnp.asarray(mask))
    tokens = jnp.asarray([5, 9, 13], jnp.int32)
    active = jnp.asarray([True, False, True])
    kernel = functools.partial(decode_attention, impl="pallas", block_kv=8)

    @jax.jit
    def three_ways(params, cache):
        want, want_cache = forward(params, config, tokens[:, None], cache=cache, attention_mask=active[:, None])
        hooked, _ = forward(params, config, tokens[:, None], cache=cache, attention_mask=active[:, None],
                            decode_attention=kernel)
        stepped, step_cache = decode_step(params, config, tokens, cache, active, kernel)
        fused, fused_cache = decode_step(params, config, tokens, cache, active, kernel, *host_layout(params, config))
        assert cpu_ffi.available() or not shutil.which("c++"), "the C++ kernels should build here"
        packed, _ = decode_step(params, config, tokens, cache, active, kernel, *host_layout(params, config, True))
        return want, want_cache, hooked, stepped, step_cache, fused, fused_cache, packed

    want, want_cache, hooked, stepped, step_cache, fused, fused_cache, packed = three_ways(params, cache)
    rows = np.asarray(active)
    np.testing.assert_allclose(np.asarray(hooked)[rows, 0], np.asarray(want)[rows, 0], atol=2e-5)
    np.testing.assert_allclose(np.asarray(stepped)[rows], np.asarray(want)[rows, 0], atol=2e-5)
    np.testing.assert_allclose(np.asarray(fused)[rows], np.asarray(want)[rows, 0], atol=2e-5)
    np.testing.assert_allclose(np.asarray(packed)[rows], np.asarray(want)[rows, 0], atol=2e-5)  # C++ matmul
    np.testing.assert_array_equal(np.asarray(fused_cache["lengths"]), [7, 4, 7])
    np.testing.assert_array_equal(np.asarray(step_cache["lengths"]), [7, 4, 7])
    np.testing.assert_array_equal(np.asarray(step_cache["lengths"]), np.asarray(want_cache["lengths"]))
    for name in ("k", "v"):  # every valid slot agrees (slot 4 of the inactive row is scratch)
        for b, n in enumerate([7, 4, 7]):
            np.testing.assert_allclose(np.asarray(step_cache[name])[:, b, :n],
                                       np.asarray(want_cache[name])[:, b, :n], atol=1e-6)
            np.testing.assert_allclose(np.asarray(fused_cache[name])[:, b, :n],
                                       np.asarray(want_cache[name])[:, b, :n], atol=1e-5)
