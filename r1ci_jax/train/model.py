"""Where a trainer's model comes from: a HF directory, an r1ci Orbax params directory,
a public preset or an explicit architecture (random weights, for tests and smoke runs).

Params are placed on the mesh as they are loaded (never whole on one device) and kept
in `param_dtype` ("float32": f32 master weights); the forward pass computes in
`compute_dtype` (bf16 on accelerators), the model casting weights per layer.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from r1ci_jax.config import ConfigError
from r1ci_jax.models.config import Qwen2Config

# Random models up to this size are generated on host (see random_host_params).
HOST_INIT_MAX_PARAMS = 50_000_000


@dataclasses.dataclass
class ModelSpec:
    path: str | None = None                   # HF dir (config.json + *.safetensors) or Orbax params dir
    preset: str | None = None                 # e.g. "qwen2.5-7b", random weights
    architecture: dict[str, Any] | None = None  # Qwen2Config fields, random weights
    init_seed: int = 0
    compute_dtype: str = "bfloat16"
    param_dtype: str = "float32"              # master weights; bfloat16 halves the memory
    remat: bool = False                        # recompute each layer in the backward pass
    tokenizer: str | None = None              # tokenizer dir; default: `path`

    def check(self, where: str = "model") -> None:
        given = [k for k in ("path", "preset", "architecture") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"{where}: set exactly one of path, preset, architecture (got {given or 'none'})")
        for name in ("compute_dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ConfigError(f"{where}.{name}: {getattr(self, name)!r} is not float32, bfloat16 or float16")


def _with_dtypes(config: Qwen2Config, spec: ModelSpec) -> Qwen2Config:
    return dataclasses.replace(config, dtype=spec.compute_dtype, param_dtype=spec.param_dtype, remat=spec.remat)


def load_model(spec: ModelSpec, mesh: Mesh, rules: Any = None) -> tuple[Qwen2Config, Any]:
    """(training Qwen2Config, params on `mesh`) as `spec` says."""
    from r1ci_jax.sharding import init_params_sharded, param_shardings, shard_params_from_host

    spec.check()
    if spec.path is None:
        if spec.preset is not None:
            base = Qwen2Config.preset(spec.preset)
        else:
            try:
                base = Qwen2Config(**spec.architecture)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"model.architecture: {e}") from e
        config = _with_dtypes(base, spec)
        if config.num_params() <= HOST_INIT_MAX_PARAMS:
            return config, shard_params_from_host(random_host_params(config, spec.init_seed), config, mesh, rules)
        return config, init_params_sharded(config, jax.random.PRNGKey(spec.init_seed), mesh, rules)

    root = Path(spec.path)
    if (root / "params").is_dir():
        from r1ci_jax.checkpoint.orbax import load_params
        config, params = load_params(root, mesh=mesh)
    elif (root / "config.json").is_file():
        from r1ci_jax.checkpoint.hf import load_hf
        config, params = load_hf(root, dtype=spec.param_dtype, mesh=mesh)
    else:
        raise ConfigError(f"model.path: {root} is neither a HF model directory (config.json) "
                          "nor an r1ci Orbax params directory (params/)")
    config = _with_dtypes(config, spec)
    shardings = param_shardings(config, mesh, rules)
    cast = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(config.param_jnp_dtype), p), out_shardings=shardings)
    return config, cast(params)


def random_host_params(config: Qwen2Config, seed: int) -> Any:
    """numpy params like `qwen2.init_params` (normal(0, initializer_range) matrices, zero
    biases, unit norms), generated on host: compiling the sharded random init of a small
    model takes longer than generating its weights."""
    from r1ci_jax.models.qwen2 import param_shapes
    rng = np.random.default_rng(seed)
    dtype = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16, "float16": np.float16}[config.param_dtype]

    def make(path, shape):
        name = str(path[-1].key)
        if name.endswith("norm"):
            return np.ones(shape, dtype)
        if name.endswith("bias"):
            return np.zeros(shape, dtype)
        return (config.initializer_range * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)

    return jax.tree_util.tree_map_with_path(make, param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))


def load_tokenizer(spec: ModelSpec) -> Any | None:
    """The tokenizer of `spec` (transformers AutoTokenizer from a local dir), or None."""
    location = spec.tokenizer or spec.path
    if location is None:
        return None
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.tokenizer: cannot load a tokenizer from {location}: {e}") from e
