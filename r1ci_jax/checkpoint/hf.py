"""HuggingFace safetensors checkpoints <-> r1ci_jax Qwen2 params.

`load_hf` reads one tensor at a time (never the whole checkpoint twice in host
memory) and fills the stacked per-layer arrays in place; `save_hf` writes shards
of at most `max_shard_size` bytes (plus an index file when there are several) into
a temporary directory that is renamed into place only once everything is written.
Every error names the file and tensor at fault.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.models.qwen2 import param_shapes

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(ValueError):
    """A checkpoint file or tensor is missing, malformed or does not fit the config."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """How one HF tensor maps to (a layer slice of) one of our params."""
    hf_name: str
    path: tuple[str, ...]            # key path into our params
    layer: int | None                # index on the stacked layer axis, or None
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]


def tensor_maps(config: Qwen2Config) -> list[TensorMap]:
    """The complete HF <-> ours name and layout table for `config`."""
    D, H, K, Dh = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    F, V = config.intermediate_size, config.vocab_size
    ident = lambda a: a
    maps = [TensorMap("model.embed_tokens.weight", ("embed",), None, ident, ident, (V, D)),
            TensorMap("model.norm.weight", ("final_norm",), None, ident, ident, (D,))]
    if not config.tie_word_embeddings:
        # torch Linear stores [out, in]; we store [in, out].
        maps.append(TensorMap("lm_head.weight", ("lm_head",), None, lambda a: a.T, lambda a: a.T, (V, D)))

    def proj_in(n: int):  # [n*Dh, D] <-> [D, n, Dh]
        return (lambda a: a.T.reshape(D, n, Dh), lambda a: a.reshape(D, n * Dh).T, (n * Dh, D))

    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        for name, ours, n in (("q", "q", H), ("k", "k", K), ("v", "v", K)):
            fwd, inv, shape = proj_in(n)
            maps.append(TensorMap(f"{p}self_attn.{name}_proj.weight", ("layers", ours), i, fwd, inv, shape))
            maps.append(TensorMap(f"{p}self_attn.{name}_proj.bias", ("layers", f"{ours}_bias"), i,
                                  lambda a, n=n: a.reshape(n, Dh), lambda a, n=n: a.reshape(n * Dh), (n * Dh,)))
        maps += [
            TensorMap(f"{p}self_attn.o_proj.weight", ("layers", "o"), i,
                      lambda a: a.T.reshape(H, Dh, D), lambda a: a.reshape(H * Dh, D).T, (D, H * Dh)),
            TensorMap(f"{p}mlp.gate_proj.weight", ("layers", "gate"), i, lambda a: a.T, lambda a: a.T, (F, D)),
            TensorMap(f"{p}mlp.up_proj.weight", ("layers", "up"), i, lambda a: a.T, lambda a: a.T, (F, D)),
            TensorMap(f"{p}mlp.down_proj.weight", ("layers", "down"), i, lambda a: a.T, lambda a: a.T, (D, F)),
            TensorMap(f"{p}input_layernorm.weight", ("layers", "input_norm"), i, ident, ident, (D,)),
            TensorMap(f"{p}post_attention_layernorm.weight", ("layers", "post_attn_norm"), i, ident, ident, (D,)),
        ]
    return maps


# ----------------------------------------------------------------------------- reading

def read_config(path: str | os.PathLike) -> Qwen2Config:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file}: config.json not found (is {path} a HuggingFace model directory?)")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: invalid JSON: {e}") from e
    try:
        return Qwen2Config.from_hf(hf)
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from e


def weight_files(path: str | os.PathLike) -> dict[str, Path]:
    """Map tensor name -> safetensors file that holds it (single file or sharded index)."""
    root = Path(path)
    index = root / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: malformed index file ({e!r})") from e
        files = {name: root / fname for name, fname in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise CheckpointError(f"{index}: shard {f.name} is listed but missing")
        return files
    single = root / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{root}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    with _open(single) as f:
        return {name: single for name in f.keys()}


@contextlib.contextmanager
def _open(file: Path) -> Iterator[Any]:
    try:
        with safe_open(str(file), framework="np") as f:
            yield f
    except SafetensorError as e:
        raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from e


def read_hf_numpy(path: str | os.PathLike, dtype: str | None = None,
                  progress: bool = False) -> tuple[Qwen2Config, dict[str, Any]]:
    """Read a HF Qwen2 directory into a params pytree of host numpy arrays.

    dtype: "float32" / "bfloat16" / "float16", or None to keep the checkpoint's dtype.
    Peak host memory is the params plus one tensor.
    """
    config = read_config(path)
    files = weight_files(path)
    maps = tensor_maps(config)
    expected = {m.hf_name for m in maps}
    if config.tie_word_embeddings:
        files.pop("lm_head.weight", None)  # some exports keep the tied copy; it is redundant
    missing = sorted(expected - set(files))
    extra = sorted(set(files) - expected)
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                              f"({len(missing)} in all)")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor(s) {extra[:8]}{' ...' if len(extra) > 8 else ''} "
                              f"for this Qwen2 config ({len(extra)} in all)")

    np_dtype = _NP_DTYPES[dtype] if dtype else None
    by_file: dict[Path, list[TensorMap]] = {}
    for m in maps:
        by_file.setdefault(files[m.hf_name], []).append(m)
    params: dict[str, Any] = {}
    shapes = param_shapes(config)
    bar = _progress(len(maps), f"loading {Path(path).name}", progress)
    for file, file_maps in by_file.items():
        with _open(file) as f:
            for m in file_maps:
                try:
                    tensor = f.get_tensor(m.hf_name)
                except SafetensorError as e:
                    raise CheckpointError(f"{file}: cannot read tensor {m.hf_name} ({e})") from e
                if tuple(tensor.shape) != m.hf_shape:
                    raise CheckpointError(f"{file}: tensor {m.hf_name} has shape {tuple(tensor.shape)}, "
                                          f"expected {m.hf_shape} from config.json")
                value = m.to_ours(tensor)
                target_dtype = np_dtype or tensor.dtype
                node = params
                for key in m.path[:-1]:
                    node = node.setdefault(key, {})
                leaf = m.path[-1]
                if m.layer is None:
                    node[leaf] = np.ascontiguousarray(value, dtype=target_dtype)
                else:
                    if leaf not in node:
                        node[leaf] = np.empty(_get(shapes, m.path), dtype=target_dtype)
                    node[leaf][m.layer] = value
                del tensor, value
                bar.update(1)
    bar.close()
    first = params["embed"].dtype
    param_dtype = {np.dtype(v): k for k, v in _NP_DTYPES.items()}.get(np.dtype(first))
    if param_dtype is None:
        raise CheckpointError(f"{path}: unsupported tensor dtype {first}")
    config = dataclasses.replace(config, param_dtype=param_dtype,
                                 dtype=config.dtype if param_dtype == "float32" else param_dtype)
    return config, params


def load_hf(path: str | os.PathLike, dtype: str | None = None, mesh: Any = None,
            progress: bool = False) -> tuple[Qwen2Config, dict[str, Any]]:
    """Load a HF Qwen2 directory as (config, params of jax arrays).

    With `mesh`, each param is placed on the mesh with the rules of
    `r1ci_jax.sharding` as it is converted (no full copy on one device).
    """
    import jax

    config, host = read_hf_numpy(path, dtype=dtype, progress=progress)
    if mesh is None:
        return config, jax.tree.map(jax.numpy.asarray, host)
    from r1ci_jax.sharding import shard_params_from_host
    return config, shard_params_from_host(host, config, mesh)


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, leave=False)


# ----------------------------------------------------------------------------- writing

def hf_tensors(params: dict[str, Any], config: Qwen2Config) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (hf_name, numpy array) one tensor at a time, in HF layout."""
    for m in tensor_maps(config):
        try:
            value = _get(params, m.path)
        except KeyError:
            raise CheckpointError(f"params are missing {'/'.join(m.path)} needed for {m.hf_name}") from None
        if m.layer is not None:
            value = value[m.layer]
        arr = np.ascontiguousarray(m.to_hf(np.asarray(value)))
        if arr.shape != m.hf_shape:
            raise CheckpointError(f"param {'/'.join(m.path)} gives {m.hf_name} shape {arr.shape}, "
                                  f"expected {m.hf_shape}")
        yield m.hf_name, arr


def _plan_shards(config: Qwen2Config, itemsize: int, max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for m in tensor_maps(config):
        nbytes = int(np.prod(m.hf_shape)) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(m.hf_name)
        size += nbytes
    return shards


def save_hf(params: dict[str, Any], config: Qwen2Config, path: str | os.PathLike,
            max_shard_size: int = DEFAULT_MAX_SHARD_BYTES, extra_files: dict[str, str] | None = None,
            progress: bool = False) -> Path:
    """Write `params` as a HF Qwen2 directory that transformers loads.

    Shards above `max_shard_size` bytes (index file `model.safetensors.index.json`).
    The directory is written under a temporary name beside `path` and renamed at the
    end, so a failure never leaves a half-written checkpoint at `path`. An existing
    `path` is replaced. extra_files: name -> text written alongside (e.g. tokenizer files).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        itemsize = np.dtype(np.asarray(params["embed"][:1]).dtype).itemsize
        shards = _plan_shards(config, itemsize, max_shard_size)
        names = [SINGLE_FILE] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        shard_of = {t: names[i] for i, shard in enumerate(shards) for t in shard}
        tensors = hf_tensors(params, config)
        weight_map: dict[str, str] = {}
        total = 0
        bar = _progress(len(shard_of), f"writing {dest.name}", progress)
        for name, shard in zip(names, shards):
            chunk: dict[str, np.ndarray] = {}
            for _ in shard:
                hf_name, arr = next(tensors)
                chunk[hf_name] = arr
                weight_map[hf_name] = name
                total += arr.nbytes
                bar.update(1)
            save_file(chunk, str(tmp / name), metadata={"format": "pt"})
            del chunk
        bar.close()
        if len(names) > 1:
            (tmp / INDEX_FILE).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        dtype_name = {np.dtype(v): k for k, v in _NP_DTYPES.items()}[np.dtype(np.asarray(params["embed"][:1]).dtype)]
        (tmp / "config.json").write_text(json.dumps(config.to_hf(torch_dtype=dtype_name), indent=2))
        if config.eos_token_id is not None or config.bos_token_id is not None:
            gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.to_hf()["eos_token_id"]}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
