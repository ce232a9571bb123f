"""latemm's error hierarchy, re-exported from ``fde.errors`` (the bottom of the stack) so that
``from index_store.errors import InputError`` and ``except fde.FDEInputError`` name the same
classes."""

from fde.errors import (
    FDEInputError,
    IndexCorruptError,
    IndexFormatError,
    IndexLockedError,
    InputError,
    LatemmError,
    MissingDependencyError,
    ShardUnavailableError,
    StorageError,
    require,
)

__all__ = [
    "FDEInputError",
    "IndexCorruptError",
    "IndexFormatError",
    "IndexLockedError",
    "InputError",
    "LatemmError",
    "MissingDependencyError",
    "ShardUnavailableError",
    "StorageError",
    "require",
]
