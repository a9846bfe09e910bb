"""Qwen2 forward: logits parity with transformers, KV-cache decode, configs and presets."""
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from hf_models import hf_logits, make_hf_model
from r1ci_jax.checkpoint.hf import read_hf_numpy
from r1ci_jax.models.qwen2 import Qwen2Config, forward, init_cache, init_params

# (name, transformers overrides): GQA ratios 1/2/7, head_dim 16/32/64, odd hidden, tied/untied.
PARITY_CASES = {
    "mha_hd16_untied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4),
    "gqa2_hd32_tied": dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "gqa7_hd16_tied": dict(hidden_size=112, num_attention_heads=7, num_key_value_heads=1, tie_word_embeddings=True),
    "gqa2_hd64_odd_hidden": dict(hidden_size=75, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                 intermediate_size=51),
}

jit_forward = jax.jit(forward, static_argnums=(1,))


@functools.lru_cache(maxsize=None)
def _case(name):
    model = make_hf_model(seed=len(name), **PARITY_CASES[name])
    params = _params_from_torch(model)
    config = Qwen2Config.from_hf(model.config.to_dict())
    return model, config, params


def _params_from_torch(model):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        _, params = read_hf_numpy(d)
    return jax.tree.map(jnp.asarray, params)


def _ragged_batch(rng, vocab, lengths, T, left):
    tokens = np.zeros((len(lengths), T), np.int32)
    mask = np.zeros((len(lengths), T), np.int32)
    for i, n in enumerate(lengths):
        sl = slice(T - n, T) if left else slice(0, n)
        tokens[i, sl] = rng.randint(2, vocab, n)
        mask[i, sl] = 1
    return tokens, mask


@pytest.mark.parametrize("name", sorted(PARITY_CASES))
@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_logits_match_transformers(name, left):
    model, config, params = _case(name)
    rng = np.random.RandomState(0)
    tokens, mask = _ragged_batch(rng, config.vocab_size, [11, 7, 3], 11, left)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    ref = hf_logits(model, tokens, attention_mask=mask, position_ids=positions)
    ours, cache = jit_forward(params, config, jnp.asarray(tokens), None, None, jnp.asarray(mask))
    assert cache is None
    ours = np.asarray(ours)
    assert ours.dtype == np.float32 and ours.shape == (3, 11, config.vocab_size)
    valid = mask.astype(bool)
    assert np.abs(ours[valid] - ref[valid]).max() < 1e-4
    assert np.isfinite(ours).all()


def test_config_from_hf_reads_head_dim_and_tie():
    _, config, params = _case("gqa2_hd64_odd_hidden")
    assert config.head_dim == 64 and config.hidden_size == 75
    assert params["layers"]["q"].shape == (2, 2, 64, 75)
    _, tied, tied_params = _case("gqa7_hd16_tied")
    assert tied.tie_word_embeddings and "lm_head" not in tied_params


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_kv_cache_decode_equals_full_forward(left):
    _, config, params = _case("gqa2_hd32_tied")
    rng = np.random.RandomState(1)
    lengths, T, steps, S = [6, 2, 4], 6, 5, 16
    prompt, mask = _ragged_batch(rng, config.vocab_size, lengths, T, left)
    new = rng.randint(2, config.vocab_size, (3, steps)).astype(np.int32)
    cache = init_cache(config, 3, S)
    logits, cache = jit_forward(params, config, jnp.asarray(prompt), None, cache, jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), lengths)
    step_logits = [np.asarray(logits)[np.arange(3), (T - 1) if left else np.array(lengths) - 1]]
    for t in range(steps):
        logits, cache = jit_forward(params, config, jnp.asarray(new[:, t:t + 1]), None, cache, None)
        step_logits.append(np.asarray(logits)[:, 0])
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), np.array(lengths) + steps)
    for i, n in enumerate(lengths):  # each row alone, uncached, unpadded
        real = prompt[i][mask[i].astype(bool)]
        seq = np.concatenate([real, new[i]])[None]
        full = np.asarray(jit_forward(params, config, jnp.asarray(seq))[0])[0]
        for t in range(steps + 1):
            np.testing.assert_allclose(step_logits[t][i], full[n - 1 + t], atol=2e-5, rtol=0)


def test_cache_appends_multi_token_chunks_per_row():
    """Appending a chunk (tool output) with per-row padding continues each row exactly."""
    _, config, params = _case("mha_hd16_untied")
    rng = np.random.RandomState(2)
    a = rng.randint(2, config.vocab_size, (2, 5)).astype(np.int32)
    chunk, cmask = _ragged_batch(rng, config.vocab_size, [4, 1], 4, left=False)
    cache = init_cache(config, 2, 12)
    _, cache = jit_forward(params, config, jnp.asarray(a), None, cache, None)
    logits, cache = jit_forward(params, config, jnp.asarray(chunk), None, cache, jnp.asarray(cmask))
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), [9, 6])
    for i, n in enumerate([4, 1]):
        seq = np.concatenate([a[i], chunk[i, :n]])[None]
        full = np.asarray(jit_forward(params, config, jnp.asarray(seq))[0])[0]
        np.testing.assert_allclose(np.asarray(logits)[i, :n], full[5:5 + n], atol=2e-5, rtol=0)


def test_bf16_compute_close_to_f32():
    _, config, params = _case("mha_hd16_untied")
    tokens = jnp.asarray(np.random.RandomState(3).randint(0, config.vocab_size, (2, 8)), jnp.int32)
    ref = np.asarray(jit_forward(params, config, tokens)[0])
    bf = Qwen2Config(**{**config.__dict__, "dtype": "bfloat16", "param_dtype": "bfloat16"})
    bf_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = np.asarray(jit_forward(bf_params, bf, tokens)[0])
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 0.05


def test_remat_gives_same_grads():
    _, config, params = _case("mha_hd16_untied")
    remat = Qwen2Config(**{**config.__dict__, "remat": True})
    tokens = jnp.asarray(np.random.RandomState(4).randint(0, config.vocab_size, (2, 6)), jnp.int32)
    loss = lambda p, c: jax.nn.logsumexp(forward(p, c, tokens)[0]).mean()
    g1 = jax.jit(jax.grad(loss), static_argnums=1)(params, config)
    g2 = jax.jit(jax.grad(loss), static_argnums=1)(params, remat)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


def test_init_params_shapes_and_dtype():
    config = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                         num_kv_heads=2, param_dtype="bfloat16", tie_word_embeddings=True)
    params = init_params(config, jax.random.PRNGKey(0))
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == config.num_params()
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    assert (np.asarray(params["layers"]["input_norm"]) == 1).all()
    assert (np.asarray(params["layers"]["q_bias"]) == 0).all()


def test_presets_match_yaml_and_public_sizes():
    root = Path(__file__).resolve().parents[1] / "configs" / "models"
    # approximate parameter counts of the public models, in billions
    sizes = {"qwen2.5-0.5b": 0.494, "qwen2.5-1.5b": 1.544, "qwen2.5-3b": 3.086, "qwen2.5-7b": 7.616,
             "qwen2.5-14b": 14.77, "qwen2.5-32b": 32.76}
    assert sorted(sizes) == Qwen2Config.preset_names()
    for name, billions in sizes.items():
        config = Qwen2Config.preset(name)
        assert abs(config.num_params() / 1e9 - billions) < 0.01 * billions, name
        from_yaml = Qwen2Config(**yaml.safe_load((root / f"{name}.yaml").read_text()))
        assert from_yaml == config, name
        assert config.dtype == config.param_dtype == "bfloat16"
        assert Qwen2Config.from_hf(config.to_hf(), dtype="bfloat16", param_dtype="bfloat16") == config


@pytest.mark.parametrize("bad, match", [
    (dict(num_heads=6, num_kv_heads=4, head_dim=8), "not a multiple"),
    (dict(hidden_size=30, num_heads=4), "not divisible"),
    (dict(dtype="float8"), "dtype"),
    (dict(num_layers=0), "num_layers must be positive"),
])
def test_bad_config_errors(bad, match):
    kwargs = dict(vocab_size=10, hidden_size=32, intermediate_size=8, num_layers=1, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match=match):
        Qwen2Config(**{**kwargs, **bad})


def test_from_hf_rejects_other_architectures_and_reads_old_rope_key():
    with pytest.raises(ValueError, match="not a Qwen2 model"):
        Qwen2Config.from_hf({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    old = Qwen2Config.preset("qwen2.5-0.5b").to_hf()
    del old["rope_parameters"]
    old["rope_theta"] = 12345.0
    assert Qwen2Config.from_hf(old).rope_theta == 12345.0
    with pytest.raises(ValueError, match="unknown preset"):
        Qwen2Config.preset("qwen2.5-9b")


def test_packed_segments_equal_separate_sequences():
    _, config, params = _case("gqa2_hd32_tied")
    rng = np.random.RandomState(5)
    a, b = rng.randint(2, config.vocab_size, 5), rng.randint(2, config.vocab_size, 4)
    packed = np.concatenate([a, b, [0, 0]])[None].astype(np.int32)
    segments = np.array([[1] * 5 + [2] * 4 + [0, 0]], np.int32)
    out = np.asarray(forward(params, config, jnp.asarray(packed), segment_ids=jnp.asarray(segments))[0])[0]
    for seq, sl in ((a, slice(0, 5)), (b, slice(5, 9))):
        alone = np.asarray(jit_forward(params, config, jnp.asarray(seq[None].astype(np.int32)))[0])[0]
        np.testing.assert_allclose(out[sl], alone, atol=2e-5, rtol=0)
    assert np.isfinite(out).all()
    with pytest.raises(ValueError, match="segment_ids"):
        forward(params, config, jnp.asarray(packed), segment_ids=jnp.asarray(segments),
                attention_mask=jnp.ones_like(jnp.asarray(packed)))
