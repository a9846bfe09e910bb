"""Final export of trained params as a HuggingFace safetensors directory."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from r1ci_jax.models.config import Qwen2Config
from r1ci_jax.sharding import is_main_process


def export_hf(params: Any, config: Qwen2Config, path: Path, tokenizer: Any = None,
              dtype: str | None = None) -> Path | None:
    """Gather params to host (all processes take part) and write them on process 0.

    dtype: the exported dtype (default: the compute dtype, e.g. bf16 for bf16 training)."""
    from r1ci_jax.checkpoint.hf import save_hf

    dtype = dtype or config.dtype
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        host = multihost_utils.process_allgather(params, tiled=True)
    else:
        host = jax.device_get(params)
    if not is_main_process():
        return None
    target = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16, "float16": np.float16}[dtype]
    host = jax.tree.map(lambda x: np.asarray(x).astype(target), host)
    out = save_hf(host, dataclasses.replace(config, param_dtype=dtype), path)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
