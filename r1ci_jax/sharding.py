"""One device mesh (data, fsdp, tensor) and logical-axis rules, as MaxText does.

Model code names array dimensions with logical axes ("embed", "heads", "batch", ...;
see `models.qwen2.param_logical_axes`). `ShardingConfig.rules` maps each logical
axis to zero or more mesh axes, so a YAML change re-lays out the model without
touching model code:

    mesh: {data: -1, fsdp: 1, tensor: 1}      # -1 = all remaining devices
    rules: [[batch, [data, fsdp]], [embed, fsdp], [mlp, tensor], ...]

Multi-host: `initialize_distributed()` wraps `jax.distributed.initialize` (no
Pathways); `make_mesh` then spans every process's devices and `host_batch_to_global`
turns each host's slice of a batch into one global array.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r1ci_jax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes. Params shard their embed dim over fsdp (ZeRO-3 style) and
# heads / mlp / vocab over tensor (Megatron style); activations shard batch over
# data and fsdp. Unlisted logical axes are replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("length", None),
    ("cache_length", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; exactly one may be -1 (all remaining devices)."""
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ConfigError(f"mesh axis {name!r} has size {size}; use a positive size or -1")
        if sizes.count(-1) > 1:
            raise ConfigError(f"mesh {self._text()}: at most one axis may be -1")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(f"mesh {self._text()}: the fixed axes multiply to {known}, "
                                  f"which does not divide the {num_devices} devices")
            sizes[sizes.index(-1)] = num_devices // known
        elif known != num_devices:
            raise ConfigError(f"mesh {self._text()} has {known} devices (product of the axis sizes) "
                              f"but {num_devices} devices are available")
        return tuple(sizes)  # type: ignore[return-value]

    def _text(self) -> str:
        return "{" + ", ".join(f"{n}: {getattr(self, n)}" for n in MESH_AXES) + "}"


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES


def make_mesh(mesh_config: MeshConfig | dict[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor) over `devices` (default: all, every host)."""
    if mesh_config is None:
        mesh_config = MeshConfig()
    elif isinstance(mesh_config, dict):
        unknown = sorted(set(mesh_config) - set(MESH_AXES))
        if unknown:
            raise ConfigError(f"unknown mesh axis {unknown}; mesh axes are {list(MESH_AXES)}")
        mesh_config = MeshConfig(**mesh_config)
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_config.resolve(len(devices))
    try:
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except Exception:  # topology-unaware fallback (e.g. CPU devices of several processes)
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _rules_dict(rules: Sequence[tuple[str, Any]] | None) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for entry in rules if rules is not None else DEFAULT_RULES:
        if len(entry) != 2:
            raise ConfigError(f"sharding rule {entry!r} must be [logical_axis, mesh_axes]")
        logical, mesh_axes = entry
        if mesh_axes is None:
            axes: tuple[str, ...] = ()
        elif isinstance(mesh_axes, str):
            axes = (mesh_axes,)
        else:
            axes = tuple(mesh_axes)
        for a in axes:
            if a not in MESH_AXES:
                raise ConfigError(f"sharding rule for {logical!r} names unknown mesh axis {a!r}; "
                                  f"mesh axes are {list(MESH_AXES)}")
        out[logical] = axes
    return out


def logical_to_spec(logical_axes: Sequence[str | None], rules: Sequence[tuple[str, Any]] | None = None,
                    ) -> PartitionSpec:
    """Logical axis names -> PartitionSpec. A mesh axis is used at most once per array."""
    table = _rules_dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        axes = tuple(a for a in table.get(name, ()) if a not in used) if name else ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], rules: Sequence[tuple[str, Any]] | None = None,
                   shape: Sequence[int] | None = None, name: str = "array") -> NamedSharding:
    """NamedSharding for an array with these logical axes; with `shape`, checks divisibility."""
    spec = logical_to_spec(logical_axes, rules)
    if shape is not None:
        for dim, (size, axes, logical) in enumerate(zip(shape, spec, logical_axes)):
            if axes is None:
                continue
            axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
            n = math.prod(mesh.shape[a] for a in axes_t)
            if size % n:
                detail = " x ".join(f"{a}={mesh.shape[a]}" for a in axes_t)
                raise ConfigError(f"{name}: dim {dim} ({logical}={size}) is not divisible by mesh axis "
                                  f"{detail} (= {n}); change the mesh or the rule for {logical!r}")
    return NamedSharding(mesh, spec)


def _tree_shardings(mesh: Mesh, axes_tree: Any, shapes_tree: Any, rules: Any) -> Any:
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
    paths_axes, treedef = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=is_axes)
    shapes = treedef.flatten_up_to(shapes_tree)
    out = [named_sharding(mesh, axes, rules, shape, name=jax.tree_util.keystr(path))
           for (path, axes), shape in zip(paths_axes, shapes)]
    return jax.tree_util.tree_unflatten(treedef, out)


def param_shardings(config: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> Any:
    """Pytree of NamedSharding matching the params of `config` (a Qwen2Config)."""
    from r1ci_jax.models.qwen2 import param_logical_axes, param_shapes
    return _tree_shardings(mesh, param_logical_axes(config), param_shapes(config), rules)


def cache_shardings(config: Any, mesh: Mesh, batch_size: int, max_len: int,
                    rules: Sequence[tuple[str, Any]] | None = None) -> dict[str, NamedSharding]:
    """NamedShardings of a KV cache from `init_cache(config, batch_size, max_len)`."""
    from r1ci_jax.models.qwen2 import cache_logical_axes
    kv = (config.num_layers, batch_size, max_len, config.num_kv_heads, config.head_dim)
    shapes = {"k": kv, "v": kv, "lengths": (batch_size,)}
    return _tree_shardings(mesh, cache_logical_axes(), shapes, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Sequence[tuple[str, Any]] | None = None) -> NamedSharding:
    """Sharding of a [B, ...] activation / data array: batch split, the rest replicated."""
    return named_sharding(mesh, ("batch",) + ("length",) * (ndim - 1), rules)


def init_params_sharded(config: Any, rng: jax.Array, mesh: Mesh,
                        rules: Sequence[tuple[str, Any]] | None = None) -> Any:
    """Random params created directly on their shards (never whole on one device)."""
    from r1ci_jax.models.qwen2 import init_params
    shardings = param_shardings(config, mesh, rules)
    return jax.jit(init_params, static_argnums=0, out_shardings=shardings)(config, rng)


def shard_params_from_host(host_params: Any, config: Any, mesh: Mesh,
                           rules: Sequence[tuple[str, Any]] | None = None) -> Any:
    """Host (numpy) params -> global sharded jax arrays; each device gets only its slices."""
    shardings = param_shardings(config, mesh, rules)

    def place(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, host_params, shardings)


def host_batch_to_global(local: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] | None = None) -> Any:
    """Each process's rows of a batch (numpy, leading batch dim) -> global sharded arrays."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x), rules), np.asarray(x)),
        local)


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of `tree`'s shards held by each device (to check fsdp gives 1/N)."""
    out: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
                           cpu_collectives: str = "gloo") -> None:
    """Start multi-process JAX, on TPU VMs (auto-detected), multi-node GPU or CPU.

    Arguments default to the env vars R1CI_COORDINATOR (host:port), R1CI_NUM_PROCESSES
    and R1CI_PROCESS_ID; with none set on a Cloud TPU VM, JAX discovers the slice
    itself. A single process with nothing configured is left alone. No Pathways.
    """
    coordinator_address = coordinator_address or os.environ.get("R1CI_COORDINATOR")
    if num_processes is None and os.environ.get("R1CI_NUM_PROCESSES"):
        num_processes = int(os.environ["R1CI_NUM_PROCESSES"])
    if process_id is None and os.environ.get("R1CI_PROCESS_ID"):
        process_id = int(os.environ["R1CI_PROCESS_ID"])
    on_tpu_vm = bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_ACCELERATOR_TYPE"))
    if coordinator_address is None and not on_tpu_vm:
        return
    if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)


def is_main_process() -> bool:
    """Only process 0 writes logs and reports; checkpoints are written collectively."""
    return jax.process_index() == 0
