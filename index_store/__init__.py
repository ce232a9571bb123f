"""The on-disk index: manifest, faiss FDE index, memory-mapped multi-vectors, Parquet metadata.

Imports ``fde``, numpy, pyarrow and faiss; never ``latemm`` or any model code.
"""

from index_store.errors import (
    IndexCorruptError,
    IndexFormatError,
    IndexLockedError,
    InputError,
    LatemmError,
    MissingDependencyError,
)

__all__ = [
    "IndexCorruptError",
    "IndexFormatError",
    "IndexLockedError",
    "InputError",
    "LatemmError",
    "MissingDependencyError",
]
