"""latemm's error hierarchy, in one module at the bottom of the stack (``fde`` imports nothing of
latemm, so the hierarchy lives here and ``index_store.errors`` re-exports it).

Each subclass also inherits the matching builtin, so ``except ValueError`` keeps working.
Messages say what was expected, what arrived, where (row, document id, file) and the fix.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LatemmError(Exception):
    """Base class of every error latemm raises on purpose."""


class InputError(LatemmError, ValueError):
    """Bad input: wrong shape, dtype, missing column, duplicate id, ... Nothing was written.

    ``item`` is the position of the offending item in the sequence the raising function was
    given, when there is one, so a caller that knows where the items came from (a file's rows)
    can name the row and id.
    """

    def __init__(self, message: str, *, item: int | None = None) -> None:
        super().__init__(message)
        self.item = item


class FDEInputError(InputError):
    """Vectors handed to the FDE are malformed.

    ``item`` is the offending set's position (None when the problem is not one set's) and
    ``reason`` the message without its subject, so a caller can name the set its own way
    (``f"row {item}, doc_id {ids[item]!r} {reason}"``).
    """

    def __init__(self, message: str, *, item: int | None = None, reason: str | None = None) -> None:
        super().__init__(message, item=item)
        self.reason = reason if reason is not None else message


class IndexCorruptError(LatemmError, OSError):
    """An index file is missing, truncated, malformed or does not match its checksum."""


class IndexLockedError(LatemmError, RuntimeError):
    """Another process holds the index's writer lock."""


class IndexFormatError(LatemmError, ValueError):
    """The index was written by an incompatible format version or with other settings."""


class StorageError(LatemmError, OSError):
    """Writing a file failed (disk full, quota); the message names the file. The last commit
    is intact."""


class ShardUnavailableError(LatemmError, RuntimeError):
    """A shard's actor died and could not be restarted: the search has no complete answer."""


class MissingDependencyError(LatemmError, ImportError):
    """An optional dependency is not installed; the message gives the pip line."""


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import an optional dependency or raise ``MissingDependencyError`` with the install line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is needed for this: pip install '{package or module}' "
            f"(or pip install 'latemm[{extra}]')"
        ) from exc
