"""Orbax checkpoints of model params: `DIR/config.json` + `DIR/params/` (Orbax pytree).

Used by `r1ci convert hf-to-orbax / orbax-to-hf`; the train-state checkpoints of the
trainers build on the same layout. Restores can place arrays straight onto a mesh.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax


from r1ci_jax.models.config import Qwen2Config

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_params(params: dict[str, Any], config: Qwen2Config, path: str | os.PathLike) -> Path:
    """Write params (jax or numpy arrays) and the config; replaces an existing `path`.

    The config is written last, so a directory without config.json is an incomplete save.
    """
    import orbax.checkpoint as ocp

    dest = Path(path).absolute()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(dest / PARAMS_DIR, params)
        ckptr.wait_until_finished()
    (dest / CONFIG_FILE).write_text(json.dumps(config.to_hf(torch_dtype=config.param_dtype), indent=2))
    return dest


def load_params(path: str | os.PathLike, mesh: Any = None) -> tuple[Qwen2Config, dict[str, Any]]:
    """Read what `save_params` wrote. With `mesh`, arrays are restored sharded by the rules."""
    import orbax.checkpoint as ocp

    src = Path(path).absolute()
    cfg_file = src / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: not found; {src} is not a complete r1ci Orbax params checkpoint")
    hf = json.loads(cfg_file.read_text())
    config = Qwen2Config.from_hf(hf)
    param_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    config = Qwen2Config.from_hf(hf, param_dtype=param_dtype,
                                 dtype="float32" if param_dtype == "float32" else param_dtype)
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(src / PARAMS_DIR)
        tree_meta = getattr(meta, "item_metadata", meta)
        if mesh is None:
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree_meta)
        else:
            from r1ci_jax.sharding import param_shardings
            shardings = param_shardings(config, mesh)
            # Orbax's metadata tree has its own container types: match leaves by key path.
            by_path = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(tree_meta)[0]}
            target = jax.tree_util.tree_map_with_path(
                lambda p, s: jax.ShapeDtypeStruct(by_path[jax.tree_util.keystr(p)].shape,
                                                  by_path[jax.tree_util.keystr(p)].dtype, sharding=s), shardings)
        params = ckptr.restore(src / PARAMS_DIR, target)
    return config, params


