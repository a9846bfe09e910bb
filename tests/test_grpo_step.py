"""token_logprobs against a direct log_softmax; the GRPO train step sharded over 8 host
devices equals unsharded, and micro-batched equals full batch."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1ci_jax.models.qwen2 import Qwen2Config, forward
from r1ci_jax.rl.config import GRPOLossConfig
from r1ci_jax.rl.logprobs import token_logprobs, token_logprobs_and_entropy
from r1ci_jax.rl.train_step import make_grpo_step
from r1ci_jax.sharding import batch_sharding, make_mesh, param_shardings
from r1ci_jax.train.model import random_host_params
from r1ci_jax.train.state import create_train_state, state_shardings

CONFIG = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, rope_theta=10000.0)
B, T = 8, 16


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(jnp.asarray, random_host_params(CONFIG, 0))  # no slow init compile


@pytest.fixture(scope="module")
def batch(params):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CONFIG.vocab_size, (B, T)).astype(np.int32)
    lengths = rng.integers(T // 2, T + 1, B)
    attention = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = ((rng.random((B, T)) < 0.6) & (attention > 0)).astype(np.float32)
    loss_mask[:, 0] = 0
    loss_mask[:, 1] = 1
    current = np.asarray(token_logprobs(params, CONFIG, tokens, attention, 0.9))
    old = np.where(loss_mask > 0, current + rng.normal(0, 0.2, (B, T)), 0).astype(np.float32)  # some ratios clip
    return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask, "old_logprobs": old,
            "advantages": rng.normal(size=B).astype(np.float32)}


def naive_logprobs(params, tokens, attention, temperature):
    logits = forward(params, CONFIG, tokens, attention_mask=attention)[0] / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.take_along_axis(logp_all[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    probs = jnp.exp(logp_all[:, :-1])
    ent = -jnp.sum(probs * logp_all[:, :-1], axis=-1)
    pad = jnp.zeros((tokens.shape[0], 1))
    return (jnp.concatenate([pad, lp], 1) * attention, jnp.concatenate([pad, ent], 1) * attention)


@pytest.mark.parametrize("chunk", [5, 64])  # ragged last chunk; one chunk
def test_token_logprobs_match_full_log_softmax(params, batch, chunk):
    tokens, attention = batch["tokens"], batch["attention_mask"]
    expected_lp, expected_ent = naive_logprobs(params, tokens, attention, 0.7)
    lp, ent = jax.jit(token_logprobs_and_entropy, static_argnums=(1, 4, 5))(params, CONFIG, tokens, attention,
                                                                           0.7, chunk)
    np.testing.assert_allclose(lp, expected_lp, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(ent, expected_ent, atol=2e-5, rtol=1e-5)
    assert np.all(np.asarray(lp)[:, 0] == 0) and np.all(np.asarray(lp)[attention == 0] == 0)


def test_token_logprobs_gradient_matches(params, batch):
    tokens, attention, mask = batch["tokens"], batch["attention_mask"], batch["loss_mask"]
    chunked = jax.grad(lambda p: jnp.sum(token_logprobs(p, CONFIG, tokens, attention, 1.0, 6) * mask))(params)
    direct = jax.grad(lambda p: jnp.sum(naive_logprobs(p, tokens, attention, 1.0)[0] * mask))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), chunked, direct)


LOSS = GRPOLossConfig(kl_coef=0.05, entropy_coef=0.01, temperature=0.9, logprob_chunk=8, clip_eps_high=0.28)
# Plain SGD: parameter differences are gradient differences (Adam's g / |g| would blow up
# float noise on parameters whose true gradient is 0, such as the key biases).
OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))


@functools.lru_cache(maxsize=None)
def unsharded_step(num_micro, recompute):
    return make_grpo_step(CONFIG, LOSS, OPTIMIZER, num_mini_batches=2, num_micro_batches=num_micro,
                          recompute_old_logprobs=recompute, donate=False)


def run_step(params, batch, num_micro, mesh=None, recompute=False):
    ref = jax.tree.map(lambda x: x * 1.01, params)
    if mesh is None:
        state = create_train_state(params, OPTIMIZER, seed=0)
        return unsharded_step(num_micro, recompute)(state, ref, {k: jnp.asarray(v) for k, v in batch.items()})
    shardings = param_shardings(CONFIG, mesh)
    s_shardings = state_shardings(shardings, OPTIMIZER, params, mesh)
    state = create_train_state(jax.device_put(params, shardings), OPTIMIZER, 0, s_shardings)
    step = make_grpo_step(CONFIG, LOSS, OPTIMIZER, num_mini_batches=2, num_micro_batches=num_micro,
                          recompute_old_logprobs=recompute, state_shardings=s_shardings, ref_shardings=shardings,
                          donate=False)
    device_batch = {k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    new_state, metrics = step(state, jax.device_put(ref, shardings), device_batch)
    assert new_state.params["layers"]["q"].sharding.spec == shardings["layers"]["q"].spec
    assert len(new_state.params["embed"].sharding.device_set) == 8
    return new_state, metrics


@pytest.fixture(scope="module")
def unsharded(params, batch):
    return run_step(params, batch, num_micro=1)


def assert_same_update(result, expected, atol=1e-6):
    state, metrics = result
    ref_state, ref_metrics = expected
    for key in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "grad_norm", "ratio_max", "ratio_min"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-7, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5),
                 state.params, ref_state.params)
    assert int(state.step) == int(ref_state.step) == 1


def test_step_changes_params_and_reports_clipping(unsharded, params):
    state, metrics = unsharded
    assert 0 < float(metrics["clip_frac"]) < 1 and float(metrics["kl"]) > 0
    assert not np.allclose(state.params["layers"]["q"], params["layers"]["q"])


def test_sharded_step_equals_unsharded(params, batch, unsharded):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert_same_update(run_step(params, batch, num_micro=1, mesh=mesh), unsharded)


def test_micro_batched_step_equals_full_batch(params, batch, unsharded):
    assert_same_update(run_step(params, batch, num_micro=2), unsharded)


def test_recomputed_old_logprobs_equal_exact_behaviour_logprobs(params, batch):
    exact = dict(batch, old_logprobs=np.asarray(token_logprobs(params, CONFIG, batch["tokens"],
                                                               batch["attention_mask"], 0.9)) * batch["loss_mask"])
    stale = dict(batch, old_logprobs=np.where(batch["loss_mask"] > 0, -1.0, 0.0).astype(np.float32))
    assert_same_update(run_step(params, stale, num_micro=1, recompute=True), run_step(params, exact, num_micro=1),
                       atol=1e-5)


def test_bf16_compute_keeps_f32_master_weights(params, batch):
    import dataclasses
    from r1ci_jax.rl.train_step import grpo_micro_loss
    bf16 = dataclasses.replace(CONFIG, dtype="bfloat16", param_dtype="float32")
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    device_batch["ref_logprobs"] = device_batch["old_logprobs"] * 0.9
    tokens = jnp.sum(device_batch["loss_mask"])
    loss_fn = lambda p, cfg: grpo_micro_loss(p, cfg, LOSS, device_batch, tokens, B)[0]
    loss16, grads16 = jax.jit(jax.value_and_grad(loss_fn), static_argnums=1)(params, bf16)
    loss32 = jax.jit(loss_fn, static_argnums=1)(params, CONFIG)
    leaves = jax.tree.leaves(grads16)
    assert all(g.dtype == jnp.float32 for g in leaves)  # grads land on the f32 masters
    assert all(np.isfinite(g).all() for g in leaves) and float(optax.tree.norm(grads16)) > 0
    np.testing.assert_allclose(loss16, loss32, rtol=0.05, atol=0.02)
