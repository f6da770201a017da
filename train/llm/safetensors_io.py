"""The safetensors format, read and written with numpy: no dependency beyond numpy and ml_dtypes.

A file is 8 bytes little-endian u64 N, then N bytes of JSON ``{name: {"dtype": "F32", "shape": [..],
"data_offsets": [begin, end]}, "__metadata__": {..}}`` (padded with spaces), then the raw little-endian tensor
bytes, offsets relative to the end of the header. Tensors are memory-mapped, so a 2 GB checkpoint is not read
twice. BF16 uses `ml_dtypes.bfloat16` (a JAX dependency). train.llm.weights maps such tensors onto our models.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

__all__ = ["WeightsError", "read_safetensors_header", "read_safetensors", "save_safetensors", "DEFAULT_METADATA"]

# safetensors dtype names <-> numpy dtypes (explicitly little-endian where numpy allows it).
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
# transformers refuses safetensors files whose metadata lacks a known "format".
DEFAULT_METADATA = {"format": "pt"}


class WeightsError(ValueError):
    """Pre-trained weights that cannot be read or do not fit the model: the message names the file or tensor.

    (train.checkpoint.CheckpointError is our own training checkpoints'; this one is a downloaded model's.)
    """


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("safetensors is little-endian; this reader supports little-endian hosts only")




def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where tensor data starts.

    Args:
      path: the file.

    Returns:
      (header, data_start); header maps tensor names to {"dtype", "shape", "data_offsets"} (and may hold
      "__metadata__").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > path.stat().st_size - 8:
            raise WeightsError(f"{path}: header length {n} exceeds the file size (not a safetensors file?)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: unreadable safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    return header, 8 + n


def _span(name: str, entry, path: Path) -> tuple[int, int]:
    """A header entry's byte range [begin, end), checked to hold exactly its dtype's itemsize x prod(shape)."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end)):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise WeightsError(f"{path}: tensor {name!r} has a malformed header entry "
                              f"{json.dumps(entry)[:120]} (want dtype, shape and data_offsets [begin, end])") from None
    if dtype not in _DTYPES:
        raise WeightsError(f"{path}: tensor {name!r} has dtype {dtype}, not one of {sorted(_DTYPES)}")
    if end - begin != math.prod(shape) * _DTYPES[dtype].itemsize:
        raise WeightsError(f"{path}: tensor {name!r} bytes [{begin}, {end}) do not hold {dtype}{list(shape)}")
    return begin, end


def _check_layout(header: Mapping, data_size: int, path: Path) -> None:
    """Refuse a header whose tensors do not tile the data buffer, as the reference loader does.

    The reference (safetensors' ``Metadata::validate``) sorts the tensors by offsets and requires each to begin
    where the previous one ended, to hold exactly itemsize x prod(shape) bytes, and the last to end where the
    file ends: no two tensors alias one byte range (one tensor silently loaded as another), no byte is left over.
    """
    at, previous = 0, None
    for begin, end, name in sorted((*_span(name, entry, path), name) for name, entry in header.items()):
        if begin < at:
            raise WeightsError(f"{path}: tensors {previous!r} and {name!r} share bytes [{begin}, {min(end, at)}) "
                                  "(the header aliases one byte range: not a valid safetensors file)")
        if begin > at:
            raise WeightsError(f"{path}: no tensor holds bytes [{at}, {begin}) before {name!r} (the tensors must "
                                  "cover the data contiguously: not a valid safetensors file)")
        at, previous = end, name
    if at != data_size:
        raise WeightsError(f"{path}: the tensors cover {at} bytes of a data buffer of {data_size} "
                              f"({'truncated file' if at > data_size else 'bytes left over'}: not a valid safetensors "
                              "file)")


def _tensor_view(buf: np.ndarray, entry: dict) -> np.ndarray:
    """One tensor of a memory-mapped file (its header entry checked by _check_layout) as a read-only view."""
    begin, end = entry["data_offsets"]
    return buf[begin:end].view(_DTYPES[entry["dtype"]]).reshape(tuple(entry["shape"]))


def read_safetensors(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read the tensors of one safetensors file as numpy arrays (memory-mapped, read-only).

    Args:
      path: the file.
      names: read only these tensors (all when None).

    Returns:
      name -> array, in file order.
    """
    _require_little_endian()
    path = Path(path)
    header, start = read_safetensors_header(path)
    header.pop("__metadata__", None)
    _check_layout(header, path.stat().st_size - start, path)
    wanted = set(header) if names is None else set(names)
    if not header:
        return {}
    buf = np.memmap(path, dtype=np.uint8, mode="r", offset=start)
    return {k: _tensor_view(buf, v) for k, v in header.items() if k in wanted}


def _dtype_name(a: np.ndarray) -> str:
    """The safetensors name of an array's dtype ("F32", "BF16", ...)."""
    for name, dt in _DTYPES.items():
        if a.dtype == dt:  # numpy's equality ignores "<" versus native "=" on little-endian hosts
            return name
    raise TypeError(f"dtype {a.dtype} has no safetensors name; supported: {sorted(_DTYPES)}")


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray | jax.Array],
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors to a safetensors file (atomically: a temporary file renamed into place).

    Args:
      path: the file to write.
      tensors: name -> array (numpy or JAX; F64/F32/F16/BF16 and integer/bool dtypes).
      metadata: string -> string "__metadata__"; default {"format": "pt"}, which transformers requires.

    Returns:
      The path written.
    """
    _require_little_endian()
    path = Path(path)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    # Big-endian arrays are byte-swapped: the format is little-endian.
    arrays = {k: a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a for k, a in arrays.items()}
    header, offset = {"__metadata__": dict(DEFAULT_METADATA if metadata is None else metadata)}, 0
    for name, a in arrays.items():
        header[name] = {"dtype": _dtype_name(a), "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as the reference writer does
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays.values():
            f.write(a.tobytes())
    os.replace(tmp, path)
    return path
