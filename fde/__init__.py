"""MUVERA fixed-dimensional encodings (FDE), reference-exact and batched.

A multi-vector set becomes one vector whose inner product with a query's FDE approximates the
Chamfer (MaxSim) similarity. ``encode_documents`` and ``encode_queries`` reproduce Google's
reference implementation (graph-mining ``fixed_dimensional_encoding.cc``) bit for bit up to float
rounding. This package imports numpy and torch only; it never imports ``latemm`` or
``index_store``.
"""

import os

# libgomp (torch's OpenMP) spin-waits by default: on shared or busy cores every small parallel
# op then waits for a scheduler slice (a 28x128 @ 128x100 product took 8 ms instead of 0.01 ms
# with 2 threads at load 5; a 2-D index_add_ 80-120 ms), and large products ran 1.7x slower.
# Sleeping waiters cost nothing measurable here. Set before torch loads libgomp (index_store
# and latemm import this package first); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fde.config import FDEConfig  # noqa: E402
from fde.encode import as_flat, encode_documents, encode_queries  # noqa: E402
from fde.errors import FDEInputError  # noqa: E402
from fde.matrices import fde_matrices  # noqa: E402

__all__ = [
    "FDEConfig",
    "FDEInputError",
    "as_flat",
    "encode_documents",
    "encode_queries",
    "fde_matrices",
]
