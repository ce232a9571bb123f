"""The reference's random matrices for an ``FDEConfig``, built once per config and cached.

Pure numpy on top of ``fde._stdrandom``; no I/O.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fde._stdrandom import index_sign_pairs, normal_float32
from fde.config import FDEConfig


@dataclass(frozen=True)
class FDEMatrices:
    """Random matrices of one config, stacked over repetitions.

    Attributes
    ----------
    simhash
        (d, R * k) float32; columns ``r*k .. r*k+k-1`` are repetition r's Gaussian projections,
        drawn column by column from ``mt19937(seed + r)``. None when k = 0.
    ams
        (d, R * p) float32 CountSketch matrices (one +-1 per row), or None for identity.
    final_buckets, final_signs
        (raw_dimension,) int64 and float32: the final CountSketch's output coordinate and sign
        for each raw FDE coordinate, or None when there is no final projection.
    """

    simhash: np.ndarray | None
    ams: np.ndarray | None
    final_buckets: np.ndarray | None
    final_signs: np.ndarray | None


def simhash_matrix(seed: int, dimension: int, num_projections: int) -> np.ndarray:
    """Gaussian (d, k) float32 matrix of ``SimHashMatrixFromSeed``, filled column-major."""
    values = normal_float32(seed, dimension * num_projections)
    return np.ascontiguousarray(values.reshape(num_projections, dimension).T)


def countsketch_matrix(seed: int, dimension: int, projection_dimension: int) -> np.ndarray:
    """Dense (d, p) float32 matrix of ``AMSProjectionMatrixFromSeed``: one +-1 per row."""
    buckets, signs = index_sign_pairs(seed, dimension, projection_dimension)
    out = np.zeros((dimension, projection_dimension), dtype=np.float32)
    out[np.arange(dimension), buckets] = signs
    return out


@functools.lru_cache(maxsize=32)
def fde_matrices(config: FDEConfig) -> FDEMatrices:
    """All random matrices ``config`` needs (cached; the arrays are read-only)."""
    d, R, k = config.dimension, config.num_repetitions, config.num_simhash_projections
    simhash = None
    if k > 0:
        simhash = np.concatenate([simhash_matrix(config.seed + r, d, k) for r in range(R)], axis=1)
    ams = None
    if config.projection_type == "ams_sketch":
        p = config.block_dimension
        ams = np.concatenate([countsketch_matrix(config.seed + r, d, p) for r in range(R)], axis=1)
    final_buckets = final_signs = None
    if config.final_projection_dimension is not None:
        final_buckets, final_signs = index_sign_pairs(
            config.seed, config.raw_dimension, config.final_projection_dimension
        )
    for array in (simhash, ams, final_buckets, final_signs):
        if array is not None:
            array.setflags(write=False)
    return FDEMatrices(simhash, ams, final_buckets, final_signs)
