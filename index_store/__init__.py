"""The on-disk index: manifest, faiss FDE index, memory-mapped multi-vectors, Parquet metadata.

Imports ``fde``, numpy, pyarrow and faiss; never ``latemm`` or any model code.
"""

from index_store.config import IndexConfig, default_fde_config
from index_store.errors import (
    IndexCorruptError,
    IndexFormatError,
    IndexLockedError,
    InputError,
    LatemmError,
    MissingDependencyError,
    StorageError,
)
from index_store.store import Document, Index, IndexWriter, create, open_index, verify

__all__ = [
    "Document",
    "Index",
    "IndexConfig",
    "IndexCorruptError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexWriter",
    "InputError",
    "LatemmError",
    "MissingDependencyError",
    "StorageError",
    "create",
    "default_fde_config",
    "open_index",
    "verify",
]
