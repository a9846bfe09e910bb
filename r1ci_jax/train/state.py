"""TrainState: everything a training step changes, as one pytree, and its shardings."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """step: int32[] loop steps done; params; opt_state (optax); rng: uint32[2] raw PRNG key."""
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for Orbax (which round-trips dicts most reliably)."""
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state, "rng": self.rng}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(step=d["step"], params=d["params"], opt_state=d["opt_state"], rng=d["rng"])


def opt_state_shardings(abstract_opt_state: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer state: a leaf shaped like a param (Adam's mu / nu) whose
    key path ends with that param's path takes the param's sharding; everything else
    (step counts, scalars) is replicated."""
    by_path = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        for param_path, sharding in by_path.items():
            if key.endswith(param_path) and len(sharding.spec) <= leaf.ndim:
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def state_shardings(params_shardings: Any, optimizer: optax.GradientTransformation, abstract_params: Any,
                    mesh: Mesh) -> TrainState:
    """A TrainState of NamedShardings (params as given, opt state to match, scalars replicated)."""
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(step=replicated, params=params_shardings,
                      opt_state=opt_state_shardings(abstract_opt, params_shardings, mesh), rng=replicated)


def create_train_state(params: Any, optimizer: optax.GradientTransformation, seed: int,
                       shardings: TrainState | None = None) -> TrainState:
    """Fresh state around `params` (already placed); opt state created directly on its shards."""
    def build(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          rng=jax.random.key_data(jax.random.key(seed, impl="threefry2x32")))
    if shardings is None:
        return jax.jit(build)(params)
    return jax.jit(build, out_shardings=shardings)(params)


def abstract_state(state_or_shapes: TrainState, shardings: TrainState | None = None) -> TrainState:
    """ShapeDtypeStructs (with shardings) describing a state, as a restore target."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                            state_or_shapes)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_or_shapes, shardings)


def restore_or_create_state(checkpointer: Any, latest: int | None, params: Any, optimizer: optax.GradientTransformation,
                            seed: int, shardings: TrainState, data_source: Any, writer: Any) -> tuple[TrainState, int]:
    """(state, first step): the checkpoint at step `latest` (restoring the data iterator and
    dropping metrics logged after it), or a fresh state from `params` when latest is None."""
    if latest is None:
        return create_train_state(params, optimizer, seed, shardings), 0
    target = abstract_state(jax.eval_shape(lambda p: create_train_state(p, optimizer, seed), params), shardings)
    state, extra = checkpointer.restore(latest, target)
    data_source.set_state(extra["data_state"])
    writer.truncate_after(latest)
    return state, latest
