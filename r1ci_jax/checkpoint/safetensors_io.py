"""Streaming reader/writer for the safetensors format, one tensor at a time.

The `safetensors` package reads through mmap (the whole file becomes resident while
open, doubling peak RSS during a conversion) and writes a file only from a dict of
every tensor in it. The format is small — an 8-byte little-endian header length, a
JSON header of {name: {dtype, shape, data_offsets}}, then raw little-endian data — so
we read each tensor straight into its destination buffer with `readinto` and write
each one as it is produced. Tests check both against the `safetensors` package.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_DTYPES = {"F32": np.dtype(np.float32), "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16),
           "F64": np.dtype(np.float64), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32)}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024**2


class SafetensorsFormatError(ValueError):
    """The file is not valid safetensors (truncated, bad header, unknown dtype); names the file."""


class SafetensorsFile:
    """An open .safetensors file: `entries` (name -> (dtype, shape, start, end)) and `read_into`."""

    def __init__(self, file: str | os.PathLike):
        self.path = Path(file)
        self._f: BinaryIO = open(self.path, "rb")
        try:
            self.entries, self._data_start = self._parse_header()
        except BaseException:
            self._f.close()
            raise

    def _fail(self, why: str) -> SafetensorsFormatError:
        return SafetensorsFormatError(f"{self.path}: unreadable safetensors file ({why})")

    def _parse_header(self) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...], int, int]], int]:
        size = os.fstat(self._f.fileno()).st_size
        raw = self._f.read(8)
        if len(raw) < 8:
            raise self._fail(f"file of {size} bytes is too short")
        n = int.from_bytes(raw, "little")
        if n > min(_MAX_HEADER, size - 8):
            raise self._fail(f"header length {n} exceeds the file size {size}: truncated or not safetensors")
        try:
            header = json.loads(self._f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._fail(f"header is not valid JSON: {e}") from None
        entries = {}
        data_size = size - 8 - n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                start, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise self._fail(f"bad header entry for {name}: {info!r} ({e!r})") from None
            if end - start != int(np.prod(shape)) * dtype.itemsize:
                raise self._fail(f"tensor {name}: offsets {start}..{end} do not match shape {shape} {dtype}")
            if end > data_size:
                raise self._fail(f"tensor {name} ends at byte {end} but the file holds {data_size} data bytes: "
                                 "the file is truncated")
            entries[name] = (dtype, shape, start, end)
        return entries, 8 + n

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Read tensor `name` into the contiguous array `out` (same dtype and size)."""
        dtype, shape, start, end = self.entries[name]
        if out.dtype != dtype or out.size != int(np.prod(shape)) or not out.flags["C_CONTIGUOUS"]:
            raise ValueError(f"{self.path}: {name} needs a contiguous {dtype}{shape} buffer, got {out.dtype}{out.shape}")
        self._f.seek(self._data_start + start)
        view = out.reshape(-1).view(np.uint8)
        if self._f.readinto(memoryview(view)) != end - start:
            raise self._fail(f"short read of tensor {name}")

    def read(self, name: str) -> np.ndarray:
        dtype, shape, _, _ = self.entries[name]
        out = np.empty(shape, dtype)
        self.read_into(name, out)
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_safetensors(file: str | os.PathLike, layout: list[tuple[str, tuple[int, ...]]], dtype: np.dtype,
                      tensors: Iterator[tuple[str, np.ndarray]], on_tensor: Callable[[int], Any] = lambda n: None,
                      metadata: dict[str, str] | None = None) -> int:
    """Write one file; `tensors` yields `layout`'s names in order. Returns data bytes written."""
    dtype = np.dtype(dtype)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape in layout:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the reference writer does
    with open(file, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape in layout:
            got_name, arr = next(tensors)
            if got_name != name or tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{file}: expected tensor {name}{tuple(shape)} next, got {got_name}{arr.shape}")
            f.write(np.ascontiguousarray(arr, dtype=dtype).reshape(-1).view(np.uint8).data)
            on_tensor(1)
    return offset
