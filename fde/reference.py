"""Run Google's reference FDE (through the ``muvfde`` package) on an ``FDEConfig``.

For checking ``fde`` against the reference in tests and benchmarks; ``muvfde`` is an optional
dependency (``pip install muvfde``) imported only when these functions are called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fde.config import FDEConfig


def _muvfde() -> Any:
    try:
        import muvfde
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the reference FDE needs the muvfde package: pip install 'muvfde>=0.0.9'"
        ) from exc
    return muvfde


def muvfde_config(config: FDEConfig, *, document: bool) -> Any:
    """The muvfde config equal to ``config`` for documents (AVERAGE) or queries (SUM).

    muvfde's setters return copies, so each is called on the object itself, never chained.
    """
    muvfde = _muvfde()
    out = muvfde.fixed_dimensional_encoding_config()
    out.set_num_repetitions(config.num_repetitions)
    out.set_num_simhash_projections(config.num_simhash_projections)
    out.set_seed(config.seed)
    if config.projection_type == "ams_sketch":
        out.set_projection_type(muvfde.projection_type.AMS_SKETCH)
        out.set_projection_dimension(config.block_dimension)
    if config.final_projection_dimension is not None:
        out.set_final_projection_dimension(config.final_projection_dimension)
    if document:
        out.set_encoding_type(muvfde.encoding_type.AVERAGE)
        if config.fill_empty_partitions:
            out.enable_fill_empty(True)
    return out


def reference_encode(sets: list[np.ndarray], config: FDEConfig, *, document: bool) -> np.ndarray:
    """(n, D) float32 FDEs from the reference, one call per set (its only interface)."""
    muvfde = _muvfde()
    native = muvfde_config(config, document=document)
    out = np.empty((len(sets), config.output_dimension), dtype=np.float32)
    for i, vectors in enumerate(sets):
        out[i] = muvfde.generate_fixed_dimensional_encoding(
            np.ascontiguousarray(vectors, dtype=np.float32), native
        )
    return out
