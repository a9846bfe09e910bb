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
from r1ci_jax.checkpoint.safetensors_io import SafetensorsFile, SafetensorsFormatError, write_safetensors

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
    """The complete HF <-> ours name and layout table for `config`.

    Our weights keep torch's [out, in] order, so every mapping is a reshape (a view).
    """
    D, H, K, Dh = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    F, V = config.intermediate_size, config.vocab_size

    def same(name: str, path: tuple[str, ...], layer: int | None, shape: tuple[int, ...]) -> TensorMap:
        return TensorMap(name, path, layer, lambda a: a, lambda a: a, shape)

    def reshaped(name: str, path: tuple[str, ...], layer: int, hf_shape: tuple[int, ...],
                 our_shape: tuple[int, ...]) -> TensorMap:
        return TensorMap(name, path, layer, lambda a: a.reshape(our_shape), lambda a: a.reshape(hf_shape), hf_shape)

    maps = [same("model.embed_tokens.weight", ("embed",), None, (V, D)),
            same("model.norm.weight", ("final_norm",), None, (D,))]
    if not config.tie_word_embeddings:
        maps.append(same("lm_head.weight", ("lm_head",), None, (V, D)))
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        for name, n in (("q", H), ("k", K), ("v", K)):
            maps.append(reshaped(f"{p}self_attn.{name}_proj.weight", ("layers", name), i, (n * Dh, D), (n, Dh, D)))
            maps.append(reshaped(f"{p}self_attn.{name}_proj.bias", ("layers", f"{name}_bias"), i, (n * Dh,), (n, Dh)))
        maps += [
            reshaped(f"{p}self_attn.o_proj.weight", ("layers", "o"), i, (D, H * Dh), (D, H, Dh)),
            same(f"{p}mlp.gate_proj.weight", ("layers", "gate"), i, (F, D)),
            same(f"{p}mlp.up_proj.weight", ("layers", "up"), i, (F, D)),
            same(f"{p}mlp.down_proj.weight", ("layers", "down"), i, (D, F)),
            same(f"{p}input_layernorm.weight", ("layers", "input_norm"), i, (D,)),
            same(f"{p}post_attention_layernorm.weight", ("layers", "post_attn_norm"), i, (D,)),
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
        return {name: single for name in f.entries}


@contextlib.contextmanager
def _open(file: Path) -> Iterator[SafetensorsFile]:
    try:
        with SafetensorsFile(file) as f:
            yield f
    except SafetensorsFormatError as e:
        raise CheckpointError(str(e)) from e


def read_hf_numpy(path: str | os.PathLike, dtype: str | None = None,
                  progress: bool = False) -> tuple[Qwen2Config, dict[str, Any]]:
    """Read a HF Qwen2 directory into a params pytree of host numpy arrays.

    dtype: "float32" / "bfloat16" / "float16", or None to keep the checkpoint's dtype.
    Each tensor is read from disk straight into its place: peak host memory is the params
    (plus one tensor when casting).
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
                if m.hf_name not in f.entries:
                    raise CheckpointError(f"{file}: tensor {m.hf_name} is listed in the index but not in the file")
                file_dtype, shape, _, _ = f.entries[m.hf_name]
                if shape != m.hf_shape:
                    raise CheckpointError(f"{file}: tensor {m.hf_name} has shape {shape}, "
                                          f"expected {m.hf_shape} from config.json")
                target_dtype = np.dtype(np_dtype or file_dtype)
                node = params
                for key in m.path[:-1]:
                    node = node.setdefault(key, {})
                leaf = m.path[-1]
                if leaf not in node:
                    node[leaf] = np.empty(_get(shapes, m.path), dtype=target_dtype)
                dest = node[leaf] if m.layer is None else node[leaf][m.layer]
                if target_dtype == file_dtype:  # straight from disk into place
                    f.read_into(m.hf_name, dest)
                else:
                    dest[...] = m.to_ours(f.read(m.hf_name)).astype(target_dtype)
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
        place = lambda arr, _path: jax.device_put(arr)
    else:
        from r1ci_jax.sharding import param_shardings
        shardings = param_shardings(config, mesh)
        place = lambda arr, path: jax.make_array_from_callback(
            arr.shape, _get(shardings, path), lambda index: arr[index])
    return config, _consume_tree(host, place)


def _consume_tree(tree: dict[str, Any], place: Callable[[np.ndarray, tuple[str, ...]], Any],
                  prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Map `place` over a nested dict, dropping each host array once placed (peak: +1 leaf)."""
    import jax

    out: dict[str, Any] = {}
    for key in list(tree):
        value = tree.pop(key)
        if isinstance(value, dict):
            out[key] = _consume_tree(value, place, prefix + (key,))
        else:
            out[key] = jax.block_until_ready(place(value, prefix + (key,)))
        del value
    return out


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
    host: dict[tuple[str, ...], np.ndarray] = {}  # one host view per param (zero-copy on CPU)
    for m in tensor_maps(config):
        if m.path not in host:
            try:
                host[m.path] = np.asarray(_get(params, m.path))
            except KeyError:
                raise CheckpointError(f"params are missing {'/'.join(m.path)} needed for {m.hf_name}") from None
        value = host[m.path] if m.layer is None else host[m.path][m.layer]
        arr = m.to_hf(value)
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
        dtype = np.dtype(np.asarray(params["embed"][:1]).dtype)
        shapes = {m.hf_name: m.hf_shape for m in tensor_maps(config)}
        weight_map: dict[str, str] = {}
        total = 0
        bar = _progress(len(shard_of), f"writing {dest.name}", progress)
        for name, shard in zip(names, shards):
            layout = [(t, shapes[t]) for t in shard]
            total += write_safetensors(tmp / name, layout, dtype, tensors, bar.update)
            weight_map.update({t: name for t in shard})
        bar.close()
        if len(names) > 1:
            (tmp / INDEX_FILE).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        dtype_name = {np.dtype(v): k for k, v in _NP_DTYPES.items()}[dtype]
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
