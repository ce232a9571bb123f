"""MUVERA fixed-dimensional encodings (FDE), reference-exact and batched.

A multi-vector set becomes one vector whose inner product with a query's FDE approximates the
Chamfer (MaxSim) similarity. ``encode_documents`` and ``encode_queries`` reproduce Google's
reference implementation (graph-mining ``fixed_dimensional_encoding.cc``) bit for bit up to float
rounding. This package imports numpy and torch only; it never imports ``latemm`` or
``index_store``.
"""

import os

# libgomp (torch's OpenMP) spins 300,000 rounds by default after each parallel region: on shared
# or busy cores every small op then waits for a scheduler slice. PASSIVE (sleep at once) cures
# that but pays a wake-up per region, which a rescoring pass of ~100 regions feels. A short spin
# is better than both (experiments/bench_openmp.py, 2 threads, best of 3; busy = 2 busy-looping
# processes beside it): the int8 pass over 320 pages idle 24 ms (PASSIVE 36), busy 57 (PASSIVE
# 79, default 76); a 2-D index_add_ busy 0.07 ms (PASSIVE 0.37, default 2.9); a query's FDE busy
# 0.8 ms (PASSIVE 0.9, default 2.9). Set before torch loads libgomp (index_store and latemm
# import this package first); a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"

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
