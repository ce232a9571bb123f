"""MUVERA fixed-dimensional encodings (FDE), reference-exact and batched.

A multi-vector set becomes one vector whose inner product with a query's FDE approximates the
Chamfer (MaxSim) similarity. ``encode_documents`` and ``encode_queries`` reproduce Google's
reference implementation (graph-mining ``fixed_dimensional_encoding.cc``) bit for bit up to float
rounding. This package imports numpy and torch only; it never imports ``latemm`` or
``index_store``.
"""

from fde.config import FDEConfig
from fde.encode import as_flat, encode_documents, encode_queries
from fde.errors import FDEInputError
from fde.matrices import fde_matrices

__all__ = [
    "FDEConfig",
    "FDEInputError",
    "as_flat",
    "encode_documents",
    "encode_queries",
    "fde_matrices",
]
