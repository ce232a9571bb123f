"""MUVERA fixed-dimensional encodings (FDE), reference-exact and batched.

A multi-vector set becomes one vector whose inner product with a query's FDE approximates the
Chamfer (MaxSim) similarity. ``encode_documents`` and ``encode_queries`` reproduce Google's
reference implementation (graph-mining ``fixed_dimensional_encoding.cc``) bit for bit up to float
rounding. This package imports numpy and torch only; it never imports ``latemm`` or
``index_store``.
"""

import os

# libgomp (torch's OpenMP) spin-waits by default: on shared or busy cores every small parallel
# op then waits for a scheduler slice. experiments/bench_openmp.py, 2 threads at load 6-8: a
# query's FDE 11 ms -> 0.8 ms, a 28x128 @ 128x100 product 10 ms -> 0.09 ms, a 2-D index_add_
# 99 ms -> 0.1 ms; a (263680 x 128) @ (128 x 28) product 47 -> 61 ms (noisy; 0.8x). Set before
# torch loads libgomp (index_store and latemm import this package first); a user's own setting
# wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fde.config import FDEConfig  # noqa: E402
from fde.encode import as_flat, encode_documents, encode_flat, encode_queries  # noqa: E402
from fde.errors import FDEInputError  # noqa: E402
from fde.matrices import fde_matrices  # noqa: E402

__all__ = [
    "FDEConfig",
    "FDEInputError",
    "as_flat",
    "encode_documents",
    "encode_flat",
    "encode_queries",
    "fde_matrices",
]
