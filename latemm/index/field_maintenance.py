"""Deleting documents from a multi-field index and compacting it, every field in one operation.

Each field is its own sub-index with its own commit (an ``index_store`` manifest, or for bm25
the build ``fields.json`` points at), so a delete cannot be one atomic swap. It is made
all-or-nothing by a journal: ``DIR/journal.json`` (the doc ids) is written, fsynced, before any
field changes; every field then drops those ids (idempotent: a field that no longer holds them
is left alone); the journal is removed last. A process that dies midway leaves the journal, and
whoever opens the index next finishes the delete before reading anything (``recover``), so no
search ever sees fields that disagree about which pages exist. Compacting changes no field's
documents, so a compaction cut short needs no repair (the next one finishes it).

Imports ``index_store`` and ``latemm.index.fields``, ``latemm.index.bm25``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from index_store import create
from index_store.errors import IndexLockedError, InputError
from index_store.fsio import write_json_atomic
from latemm.index.fields import (  # the journal's format and replay live with the fields
    FIELDS_FILE,
    JOURNAL,
    FieldSpec,
    compact_store,
    field_dir,
    finish_delete,
    is_fields_index,
    locked,
    read_fields,
    remove_stale_builds,
    vector_index,
)


def _fields_root(index_dir: str | Path) -> Path:
    root = Path(index_dir)
    if not is_fields_index(root):
        raise InputError(
            f"{root} has no {FIELDS_FILE}: it is not a multi-field index (a plain index is "
            "changed by index_store's IndexWriter, as `latemm delete` does)"
        )
    return root


def held_ids(index_dir: str | Path, spec: FieldSpec) -> set[str]:
    """The doc ids field ``spec`` of ``index_dir`` holds."""
    from latemm.index import bm25

    root = Path(index_dir)
    if spec.kind == "bm25":
        return set(bm25.read_docs(field_dir(root, spec)))
    index = vector_index(root, spec)
    return set() if index is None else set(index.doc_ids())


def delete(index_dir: str | Path, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
    """Delete ``doc_ids`` from every field of a multi-field index that holds them, as one
    operation (see the module docstring). Returns how many of the ids were found.

    An id that no field holds is an error naming it (nothing is deleted), unless
    ``missing_ok``."""
    root = _fields_root(index_dir)
    ids = list(dict.fromkeys(str(d) for d in doc_ids))
    with locked(root):
        finish_delete(root)
        manifest = read_fields(root)
        held = set().union(*(held_ids(root, spec) for spec in manifest.fields))
        missing = [d for d in ids if d not in held]
        if missing and not missing_ok:
            raise InputError(
                f"doc_id {missing[0]!r} is in no field of {root} (fields: "
                f"{', '.join(manifest.names)}); nothing was deleted (--missing-ok skips such ids)"
            )
        found = [d for d in ids if d in held]
        if found:
            begin_delete(root, found)
            finish_delete(root)
    return len(found)


def begin_delete(index_dir: str | Path, doc_ids: Sequence[str]) -> None:
    """The first step of ``delete``: record the ids in the journal (written atomically). From
    here on the delete happens, now or when the index is next opened."""
    payload = {"op": "delete", "doc_ids": list(doc_ids), "started": time.time()}
    write_json_atomic(Path(index_dir) / JOURNAL, payload)


def recover(index_dir: str | Path) -> int:
    """Finish a delete that was cut short (the journal is there) before the index is read, and
    warn that it did; returns how many ids it deleted (0: nothing to finish).

    Raises ``IndexLockedError`` when another process holds the index: its delete is under way,
    and the fields may disagree until it ends."""
    root = Path(index_dir)
    if not (root / JOURNAL).is_file():
        return 0
    try:
        with locked(root):
            done = finish_delete(root)
    except IndexLockedError as exc:
        raise IndexLockedError(
            f"{root} is being changed by another process (a delete of its fields is under "
            "way); search it when that finishes"
        ) from exc
    if done:
        warnings.warn(
            f"{root}: finished a delete of {done} document(s) that was interrupted "
            f"({JOURNAL}); every field now agrees on which pages exist",
            stacklevel=2,
        )
    return done


def compact(index_dir: str | Path) -> dict[str, Any]:
    """Rewrite every vector field without its deleted documents (bm25 builds hold none);
    returns name -> the field's generation (vector) or build (bm25) after it. An unfinished
    delete is finished first."""
    root = _fields_root(index_dir)
    out: dict[str, Any] = {}
    with locked(root):
        finish_delete(root)
        for spec in read_fields(root).fields:
            if spec.kind == "bm25":
                out[spec.name] = spec.options["dir"]
                continue
            index = vector_index(root, spec)
            if index is None:
                out[spec.name] = 0
                continue
            with create(index.path, index.config) as writer:
                out[spec.name] = writer.compact()
        compact_store(root)  # the page store: deleted pages' content dropped
        remove_stale_builds(root)
    return out
