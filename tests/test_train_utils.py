"""Shared trainer pieces: schedule, weight-decay mask, optimizer-state shardings,
TensorBoard event files (decoded with protobuf), metrics resume truncation,
checkpoint round trip, plugin loading, overrides, and every shipped recipe."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1ci_jax.config import ConfigError, from_dict, from_yaml
from r1ci_jax.train.loop import apply_overrides, due, load_object
from r1ci_jax.train.metrics import MetricsWriter, read_metrics
from r1ci_jax.train.optim import OptimizerConfig, decay_mask, make_optimizer, make_schedule
from r1ci_jax.train.tfevents import crc32c

ROOT = Path(__file__).resolve().parents[1]


def test_warmup_then_cosine():
    schedule = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=4, min_lr_ratio=0.1), 14)
    values = [float(schedule(i)) for i in range(15)]
    np.testing.assert_allclose(values[:5], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(values[9], 0.1 + 0.9 * 0.5, rtol=1e-6)  # half-way down the cosine
    np.testing.assert_allclose(values[14], 0.1, rtol=1e-6)
    assert float(make_schedule(OptimizerConfig(learning_rate=2.0, decay="constant"), 10)(7)) == 2.0
    with pytest.raises(ConfigError, match="optimizer.decay: 'linear'"):
        make_schedule(OptimizerConfig(decay="linear"), 10)


def test_adamw_skips_decay_on_norms_and_biases_and_clips():
    params = {"embed": jnp.ones((4, 2)), "layers": {"q_bias": jnp.ones((2, 2, 2)), "input_norm": jnp.ones((2, 2))}}
    mask = decay_mask(params)
    assert mask == {"embed": True, "layers": {"q_bias": False, "input_norm": False}}
    opt, _ = make_optimizer(OptimizerConfig(learning_rate=0.1, weight_decay=0.5, max_grad_norm=1.0), 10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero_grads, opt.init(params), params)
    assert float(updates["embed"][0, 0]) == pytest.approx(-0.05)  # decay only
    assert float(jnp.abs(updates["layers"]["q_bias"]).max()) == 0.0


def test_optimizer_state_follows_param_shardings():
    from r1ci_jax.models.qwen2 import Qwen2Config
    from r1ci_jax.sharding import make_mesh, param_shardings
    from r1ci_jax.train.state import state_shardings
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = param_shardings(config, mesh)
    opt, _ = make_optimizer(OptimizerConfig(), 10)
    from r1ci_jax.models.qwen2 import param_shapes
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), param_shapes(config),
                            is_leaf=lambda x: isinstance(x, tuple))
    states = state_shardings(shardings, opt, abstract, mesh)
    adam = states.opt_state[1][0]
    assert adam.mu["layers"]["gate"].spec == shardings["layers"]["gate"].spec
    assert adam.nu["embed"].spec == shardings["embed"].spec
    assert adam.count.spec == jax.sharding.PartitionSpec()


def parse_events(path: Path) -> list:
    """Decode an event file with protobuf, from a descriptor of TensorBoard's Event proto."""
    import struct
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    fd = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    value = fd.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = fd.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".t.Value", label=F.LABEL_REPEATED)
    event = fd.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".t.Summary", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))
    data, events, at = path.read_bytes(), [], 0
    masked = lambda b: ((((crc32c(b) >> 15) | (crc32c(b) << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        assert struct.unpack_from("<I", data, at + 8)[0] == masked(data[at:at + 8])
        payload = data[at + 12:at + 12 + length]
        assert struct.unpack_from("<I", data, at + 12 + length)[0] == masked(payload)
        events.append(Event.FromString(payload))
        at += 16 + length
    return events


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283


def test_metrics_jsonl_and_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        writer.write(step, {"loss": 1.0 / step, "reward_mean": np.float32(0.5), "note": "x"})
    writer.write(3, {"loss": 0.25}, split="eval")
    writer.truncate_after(2)  # a run resumed from step 2 redoes step 3
    writer.write(3, {"loss": 0.3})
    writer.close()
    train = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in train] == [(1, 1.0), (2, 0.5), (3, 0.3)]
    assert read_metrics(tmp_path / "metrics.jsonl", split="eval") == []
    (events_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events = parse_events(events_file)
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert (2, "train/loss", 0.5) in scalars and (3, "eval/loss", 0.25) in scalars
    assert all(tag != "train/note" for _, tag, _ in scalars)


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(tmp_path / "m", enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "m").exists()


def test_checkpoint_round_trip_keeps_last_n(tmp_path):
    import optax
    from r1ci_jax.train.checkpoint import TrainCheckpointer
    from r1ci_jax.train.state import abstract_state, create_train_state
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.ones(3)}}
    opt = optax.adam(1e-2)
    state = create_train_state(params, opt, seed=7)
    ckpt = TrainCheckpointer(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, state, {"data_state": {"index": step}, "note": "ok"})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    restored, extra = ckpt.restore(3, abstract_state(state))
    ckpt.close()
    assert extra == {"data_state": {"index": 3}, "note": "ok"}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, state)
    assert type(restored.opt_state[0]).__name__ == "ScaleByAdamState"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint for step 1"):
        TrainCheckpointer(tmp_path / "ckpt").restore(1, abstract_state(state))


def test_helpers():
    assert due(10, 5) and not due(10, 3) and not due(10, 0)
    assert load_object("r1ci_jax.rl.grpo:group_advantages").__name__ == "group_advantages"
    with pytest.raises(ConfigError, match="not of the form"):
        load_object("r1ci_jax.rl.grpo.group_advantages")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_object("r1ci_jax.rl.grpo:nope")
    data = apply_overrides({"loop": {"total_steps": 3}}, ["loop.total_steps=7", "loss.kl_coef=0", "x.y.z=[1, 2]"])
    assert data == {"loop": {"total_steps": 7}, "loss": {"kl_coef": 0}, "x": {"y": {"z": [1, 2]}}}


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "grpo").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grpo_recipes_load_and_check(path):
    from r1ci_jax.rl.config import GRPOConfig
    config = from_yaml(GRPOConfig, path)
    config.check()
    if path.name.startswith("qwen2.5"):  # the paper's settings
        assert (config.batch.prompts_per_step, config.batch.group_size, config.batch.mini_batch_prompts) == (512, 5, 256)
        assert (config.optimizer.learning_rate, config.loss.clip_eps, config.loss.kl_coef, config.loss.entropy_coef,
                config.loss.kl_clamp, config.loss.loss_agg) == (1e-6, 0.2, 0.001, 0.001, 10.0, "token-mean")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sft").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sft_recipes_load_and_check(path):
    from r1ci_jax.sft.config import SFTConfig
    from_yaml(SFTConfig, path).check()


def test_bad_grpo_config_names_the_key():
    from r1ci_jax.rl.config import GRPOConfig
    with pytest.raises(ConfigError, match=r"config.loss: unknown key\(s\) \['kl_coeff'\]"):
        from_dict(GRPOConfig, {"model": {"preset": "qwen2.5-0.5b"}, "loss": {"kl_coeff": 0.1}})
    bad = from_dict(GRPOConfig, {"model": {"preset": "qwen2.5-0.5b"},
                                 "batch": {"prompts_per_step": 6, "mini_batch_prompts": 4}})
    with pytest.raises(ConfigError, match="prompts_per_step=6 is not a multiple of mini_batch_prompts=4"):
        bad.check()
    with pytest.raises(ConfigError, match="set exactly one of path, preset, architecture"):
        from_dict(GRPOConfig, {"model": {}}).check()
