"""Storage codecs for multi-vectors: float16, float32, int8 (per-vector scale), 1-bit signs.

Arrays in, arrays out. ``decode`` always returns float32 so MaxSim accumulates in float32 whatever
the storage.
"""

from __future__ import annotations

import numpy as np
import torch

from index_store.errors import InputError

DTYPES = ("float16", "float32", "int8", "binary")


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise InputError(f"storage dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def encode(vectors: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, d) float32 -> (codes, per-vector scales or None).

    int8: ``x ~ codes * scale`` with ``scale = max|x| / 127`` per vector.
    binary: the sign bits, packed (N, ceil(d / 8)) uint8; decoded as +-1 / sqrt(d).
    """
    if dtype == "float32":
        return vectors.astype(np.float32, copy=False), None
    if dtype == "float16":
        # torch rounds to float16 as numpy does (to nearest even), several times faster.
        return torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).half().numpy(), None
    if dtype == "int8":
        scale = np.abs(vectors).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        codes = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
        return codes, scale.astype(np.float32)
    if dtype == "binary":
        return np.packbits(vectors > 0, axis=1), None
    raise InputError(f"unknown storage dtype {dtype!r}")


def decode(codes: np.ndarray, scales: np.ndarray | None, dtype: str, dim: int) -> np.ndarray:
    """Codes of some vectors -> (n, d) float32."""
    if dtype == "float32":
        return np.asarray(codes, dtype=np.float32)
    if dtype == "float16":
        # torch widens float16 about 3x faster than numpy's astype on this hardware
        # (experiments/bench_search.py's kernel section).
        return torch.from_numpy(np.ascontiguousarray(codes)).float().numpy()
    if dtype == "int8":
        assert scales is not None
        return np.asarray(codes, dtype=np.float32) * np.asarray(scales, dtype=np.float32)[:, None]
    if dtype == "binary":
        bits = np.unpackbits(np.asarray(codes), axis=1, count=dim)
        return (bits.astype(np.float32) * 2.0 - 1.0) / np.float32(np.sqrt(dim))
    raise InputError(f"unknown storage dtype {dtype!r}")


def bytes_per_vector(dtype: str, dim: int) -> int:
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim + 4, "binary": (dim + 7) // 8}[
        dtype
    ]


def code_layout(dtype: str, dim: int) -> tuple[np.dtype, int]:
    """(numpy dtype, columns) of the stored codes of ``dim``-dimensional vectors."""
    layouts: dict[str, tuple[np.dtype, int]] = {
        "float32": (np.dtype(np.float32), dim),
        "float16": (np.dtype(np.float16), dim),
        "int8": (np.dtype(np.int8), dim),
        "binary": (np.dtype(np.uint8), (dim + 7) // 8),
    }
    return layouts[check_dtype(dtype)]
