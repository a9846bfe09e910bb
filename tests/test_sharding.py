"""Sharded forward / grads equal unsharded; rules really shard; bad meshes; two processes."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1ci_jax.config import ConfigError, from_dict
from r1ci_jax.models.qwen2 import Qwen2Config, forward, init_params
from r1ci_jax.sharding import (ShardingConfig, batch_sharding, bytes_per_device, init_params_sharded, make_mesh,
                               named_sharding, param_shardings, shard_params_from_host)

CONFIG = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                     num_kv_heads=2, rope_theta=10000.0)
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2)]


@pytest.fixture(scope="module")
def reference():
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 128, (8, 10)), jnp.int32)
    logits = jax.jit(forward, static_argnums=1)(params, CONFIG, tokens)[0]
    return params, tokens, np.asarray(logits)


def _loss(params, tokens):
    logits = forward(params, CONFIG, tokens)[0]
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_equals_unsharded(reference, shape):
    params, tokens, ref = reference
    mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
    shardings = param_shardings(CONFIG, mesh)
    sharded = shard_params_from_host(jax.tree.map(np.asarray, params), CONFIG, mesh)
    data, fsdp, tensor = shape
    gate = sharded["layers"]["gate"]  # [L, F, D]: F over tensor, D over fsdp
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
    assert gate.addressable_shards[0].data.shape == (2, 96 // tensor, 64 // fsdp)
    assert sharded["embed"].addressable_shards[0].data.shape == (128 // tensor, 64 // fsdp)
    fwd = jax.jit(lambda p, t: forward(p, CONFIG, t)[0], in_shardings=(shardings, batch_sharding(mesh)),
                  out_shardings=batch_sharding(mesh, 3))
    out = fwd(sharded, jax.device_put(tokens, batch_sharding(mesh)))
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


def test_sharded_grads_equal_unsharded(reference):
    params, tokens, _ = reference
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(_loss))(params, tokens)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = param_shardings(CONFIG, mesh)
    step = jax.jit(jax.value_and_grad(_loss), in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(None, shardings))
    loss, grads = step(jax.device_put(params, shardings), jax.device_put(tokens, batch_sharding(mesh)))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads, ref_grads)
    assert grads["layers"]["q"].sharding.spec == shardings["layers"]["q"].spec


def test_init_directly_sharded_and_fsdp_bytes():
    mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    params = init_params_sharded(CONFIG, jax.random.PRNGKey(1), mesh)
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    per_device = bytes_per_device(params)
    assert len(per_device) == 8
    replicated = sum(x.nbytes for x in jax.tree.leaves(params) if x.sharding.is_fully_replicated)
    assert replicated < 0.05 * total  # only norms and biases
    for nbytes in per_device.values():  # the rest is split exactly 8 ways
        assert nbytes == (total - replicated) // 8 + replicated


def test_rules_from_yaml_change_the_layout(tmp_path):
    cfg = from_dict(ShardingConfig, {"mesh": {"data": 2, "fsdp": 1, "tensor": 4},
                                     "rules": [["batch", ["data"]], ["mlp", "tensor"], ["vocab", None]]})
    mesh = make_mesh(cfg.mesh)
    shardings = param_shardings(CONFIG, mesh, cfg.rules)
    assert shardings["layers"]["gate"].spec == jax.sharding.PartitionSpec(None, "tensor", None)
    assert shardings["embed"].spec == jax.sharding.PartitionSpec(None, None)
    assert shardings["layers"]["q"].spec == jax.sharding.PartitionSpec(None, None, None, None)


@pytest.mark.parametrize("mesh, match", [
    ({"data": 2, "fsdp": 2, "tensor": 1}, r"has 4 devices .* but 8 devices are available"),
    ({"data": 3, "fsdp": -1}, r"fixed axes multiply to 3, which does not divide the 8 devices"),
    ({"data": -1, "fsdp": -1}, r"at most one axis may be -1"),
    ({"data": 8, "pipeline": 1}, r"unknown mesh axis \['pipeline'\]"),
])
def test_bad_mesh_configs(mesh, match):
    with pytest.raises(ConfigError, match=match):
        make_mesh(mesh)


def test_indivisible_dim_names_param_axis_and_sizes():
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
    with pytest.raises(ConfigError, match=r"\['layers'\]\['k'\]: dim 1 \(kv_heads=2\) is not divisible by mesh axis tensor=8"):
        param_shardings(CONFIG, mesh)
    with pytest.raises(ConfigError, match="unknown mesh axis 'model'"):
        named_sharding(mesh, ("embed",), rules=[("embed", "model")])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_distributed_forward():
    worker = Path(__file__).with_name("sharding_worker.py")
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
               "R1CI_COORDINATOR": f"127.0.0.1:{port}", "R1CI_NUM_PROCESSES": "2", "R1CI_PROCESS_ID": str(pid),
               "PYTHONPATH": str(worker.parent)}
        procs.append(subprocess.Popen([sys.executable, str(worker)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process run timed out")
    for pid, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, out[-3000:]
        assert f"process {pid} max_abs_diff" in out


def test_load_hf_and_orbax_restore_onto_mesh(tmp_path):
    from hf_models import make_hf_model, save_hf_model
    from r1ci_jax.checkpoint.hf import load_hf
    from r1ci_jax.checkpoint.orbax import load_params, save_params
    src = save_hf_model(make_hf_model(seed=5, vocab_size=128), tmp_path / "hf")
    config, plain = load_hf(src)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, sharded = load_hf(src, mesh=mesh)
    expected = param_shardings(config, mesh)
    jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(str(x.sharding)), sharded, expected)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), sharded, plain)
    save_params(sharded, config, tmp_path / "orbax")
    _, restored = load_params(tmp_path / "orbax", mesh=mesh)
    jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(str(x.sharding)), restored, expected)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), restored, plain)


@pytest.mark.parametrize("size", ["0.5b", "1.5b", "3b", "7b", "14b", "32b"])
def test_shipped_mesh_layouts_fit_their_presets(size):
    from r1ci_jax.config import from_yaml
    root = Path(__file__).resolve().parents[1] / "configs" / "mesh"
    cfg = from_yaml(ShardingConfig, root / f"qwen2.5-{size}.yaml")
    config = Qwen2Config.preset(f"qwen2.5-{size}")
    mesh = make_mesh(cfg.mesh)
    shardings = param_shardings(config, mesh, cfg.rules)  # raises if a dim does not divide
    L, D, F = config.num_layers, config.hidden_size, config.intermediate_size
    gate = shardings["layers"]["gate"].shard_shape((L, F, D))
    expected = {"0.5b": (L, F, D), "7b": (L, F, D // 8), "32b": (L, F // 4, D // 2)}
    if size in expected:
        assert gate == expected[size]
