"""A sharded multi-field collection: N fields indexes under one directory, one commit file.

Layout::

    DIR/shards.json             the commit point (``latemm.index.sharded``'s file, format_version 2,
                                ``"shard_kind": "fields"``): shard names, pages per shard,
                                the collection's fields (name, kind, reads, encoder, options),
                                generation
    DIR/shards/shard-0000/      a fields index (``latemm.index.fields``) over the pages routed to
                                it by ``shard_of(doc_id, N)``; a shard no page routes to has
                                no folder yet
    DIR/building.json           a first build's N, until shards.json is committed
    DIR/deleting.json           a delete's ids, until every shard has dropped them

Writers hold the collection's lock (``sharded.writer_lock``) for their whole run; each shard's
fields are written by ``latemm.index.fields.index_fields`` and ``latemm.index.field_maintenance``,
as for an unsharded index. Readers never write: ``latemm.retrieval.field_search.FieldRetriever``
opens every shard's fields as parts of one field, leaves out the ids of an unfinished delete, and
scores BM25 with the collection's statistics, merged from each shard's saved ones
(``latemm.index.bm25.BM25Index.merged``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from index_store.errors import IndexCorruptError, IndexFormatError, InputError
from index_store.fsio import find_links, read_json_object, refuse_links, write_json_atomic
from latemm.index import field_maintenance
from latemm.index.fields import (
    FIELDS_FILE,
    FieldRequest,
    FieldsManifest,
    FieldSpec,
    is_fields_index,
    load_field_encoder,
    read_fields,
    read_journal,
    recorded_request,
    verify_fields,
)
from latemm.index.sharded import (
    BUILDING,
    DELETING,
    FIELDS_SHARD_KIND,
    HASH,
    SHARDS_MANIFEST,
    assign_shards,
    check_new_folder,
    extra_shards,
    is_field_shards,
    is_sharded,
    partition_corpus,
    pending_deletes,
    read_manifest,
    shard_name,
    shard_of,
    staging_dir,
    writer_lock,
)

FORMAT_VERSION = 2
# What a bm25 field's spec records about one build (per shard), not about the field.
_BUILD_OPTIONS = ("dir", "files", "documents", "rejected")


@dataclass(frozen=True)
class FieldShards:
    """What ``DIR/shards.json`` of a sharded multi-field collection records."""

    num_shards: int
    fields: tuple[FieldSpec, ...]
    documents: tuple[int, ...]
    generation: int = 1

    @property
    def names(self) -> list[str]:
        return [shard_name(s) for s in range(self.num_shards)]

    def manifest(self) -> FieldsManifest:
        """The collection's fields as one ``FieldsManifest`` (what a search plans over)."""
        return FieldsManifest(self.fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "sharded",
            "shard_kind": FIELDS_SHARD_KIND,
            "hash": HASH,
            "num_shards": self.num_shards,
            "shards": [
                {"name": name, "path": f"shards/{name}", "documents": docs}
                for name, docs in zip(self.names, self.documents, strict=True)
            ],
            "fields": [f.to_dict() for f in self.fields],
            "documents": sum(self.documents),
            "generation": self.generation,
        }


def read_field_shards(root: str | Path) -> FieldShards:
    """Read a sharded multi-field collection's ``shards.json``; errors name the file."""
    path = Path(root) / SHARDS_MANIFEST
    refuse_links(root)  # an index is untrusted data: nothing in it may point outside
    if not is_field_shards(root):
        raise InputError(f"{root} is not a sharded multi-field collection ({path})")
    payload = read_json_object(path)
    if payload.get("format_version") != FORMAT_VERSION or payload.get("hash") != HASH:
        raise IndexFormatError(
            f"{path} has format_version {payload.get('format_version')} and hash "
            f"{payload.get('hash')!r}; this latemm reads version {FORMAT_VERSION} with {HASH!r}"
        )
    try:
        n = payload["num_shards"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_shards {n!r} is not a positive int")
        documents = tuple(int(s["documents"]) for s in payload["shards"])
        if len(documents) != n:
            raise ValueError(f"{len(documents)} shard entries for {n} shards")
        fields = tuple(FieldSpec.from_dict(f) for f in payload["fields"])
        return FieldShards(n, fields, documents, int(payload.get("generation", 1)))
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise IndexCorruptError(f"{path} is malformed: {exc}") from exc


def shard_dir(root: str | Path, shard: int) -> Path:
    return Path(root) / "shards" / shard_name(shard)


def shard_layout(root: str | Path, shards: FieldShards) -> list[tuple[int, Path, FieldsManifest]]:
    """(shard, folder, its fields) of every shard that holds a fields index (a shard no page
    routed to yet has none)."""
    out = []
    for shard in range(shards.num_shards):
        folder = shard_dir(root, shard)
        if is_fields_index(folder):
            out.append((shard, folder, read_fields(folder)))
    return out


def hidden_ids(root: str | Path, shards: FieldShards) -> list[str] | None:
    """The ids of an unfinished delete (the collection's ``deleting.json`` and any shard's own
    journal), sorted; None when there is none. Readers leave them out."""
    ids = set(pending_deletes(root))
    for shard in range(shards.num_shards):
        folder = shard_dir(root, shard)
        if is_fields_index(folder):
            ids.update(read_journal(folder) or ())
    return sorted(ids) if ids else None


def collection_spec(spec: FieldSpec) -> FieldSpec:
    """A shard's field spec as the collection records it: without one build's details."""
    options = {k: v for k, v in spec.options.items() if k not in _BUILD_OPTIONS}
    return replace(spec, options=options)


# ------------------------------------------------------------------------------ building
def _requests(
    fields: Mapping[str, Any] | Sequence[FieldRequest] | None,
    existing: FieldShards | None,
    root: Path,
    device: str | None,
) -> list[FieldRequest]:
    """The fields to build, each encoder loaded once for every shard."""
    from latemm.index.fields import parse_field

    if fields is None:
        if existing is None or not existing.fields:
            raise InputError(f"{root} has no fields yet; name them with --field NAME=ENCODER")
        requests = [recorded_request(spec) for spec in existing.fields]
    elif isinstance(fields, Mapping):
        requests = [
            v if isinstance(v, FieldRequest)
            else parse_field(f"{n}={v}") if isinstance(v, (str, Path))
            else FieldRequest(n, v, _kind_of(v))
            for n, v in fields.items()
        ]  # fmt: skip
    else:
        requests = list(fields)
    if not requests:
        raise InputError("no fields to index; name at least one with --field NAME=ENCODER")
    loaded = []
    for req in requests:
        source = req.source
        if (
            isinstance(source, str)
            and req.kind != "bm25"
            and not source.startswith(("bm25", "embedding:"))
        ):
            source = load_field_encoder(req.name, source, req.kind, device=device)
        loaded.append(FieldRequest(req.name, source, req.kind))
    return loaded


def _kind_of(encoder: Any) -> str:
    options = getattr(getattr(encoder, "info", None), "options", None) or {}
    return "single" if options.get("pooling") else "multi"


def _shard_count(root: Path, num_shards: int | None, existing: FieldShards | None) -> int:
    """N: the collection's (a different one is an error), an interrupted first build's, or
    the one asked for a new collection."""
    if existing is not None:
        if num_shards is not None and num_shards != existing.num_shards:
            raise InputError(
                f"{root} has {existing.num_shards} shards, not {num_shards}; doc ids are routed "
                f"by hash mod N, so N is fixed: pass --shards {existing.num_shards} or a new folder"
            )
        return existing.num_shards
    building = root / BUILDING
    if building.is_file():
        payload = read_json_object(building)
        recorded = payload.get("num_shards")
        if payload.get("shard_kind") != FIELDS_SHARD_KIND:
            raise InputError(
                f"{root} holds an interrupted sharded build of one encoder ({BUILDING}); finish "
                "it without --field, or delete the folder"
            )
        if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded < 1:
            raise IndexCorruptError(f"{building} is malformed: num_shards {recorded!r}")
        if num_shards is not None and num_shards != recorded:
            raise InputError(
                f"{root} holds an interrupted first build of {recorded} shards ({BUILDING}); "
                f"doc ids are routed by hash mod N, so finish it with --shards {recorded}, or "
                "delete the folder to start over with another N"
            )
        return int(recorded)
    if num_shards is None or isinstance(num_shards, bool) or num_shards < 1:
        raise InputError(f"--shards must be a positive number of shards, got {num_shards}")
    return num_shards


def index_field_shards(
    corpus: str | Path,
    index_dir: str | Path,
    fields: Mapping[str, Any] | Sequence[FieldRequest] | None = None,
    *,
    num_shards: int | None = None,
    columns: Any = None,
    device: str | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, int]:
    """Index a Parquet corpus into the named fields of a sharded collection (created with
    ``num_shards`` shards if new): the corpus is split by ``shard_of`` and each shard's pages
    go into that shard's fields index (``latemm.index.fields.index_fields``), then ``shards.json``
    is committed. ``fields`` as for ``index_fields`` (None: every recorded field; a field
    named for the first time is added to every shard). Re-running resumes an interrupted
    build. Returns field name -> documents in that field over every shard."""
    from latemm.data.io import Columns
    from latemm.index.fields import index_fields

    root = Path(index_dir)
    if (root / "manifest.json").is_file() or is_fields_index(root):
        raise InputError(
            f"{root} holds an unsharded index; --shards with --field builds a sharded "
            "collection into a new folder (leave out --shards to add to this one)"
        )
    if is_sharded(root) and not is_field_shards(root):
        read_manifest(root)  # a damaged or linked shards.json is named as such first
        raise InputError(
            f"--field: {root} is a sharded index of one encoder; named fields go into a new "
            "folder (`latemm index CORPUS --index NEW_DIR --field NAME=ENCODER --shards N`)"
        )
    check_new_folder(root)  # never among a user's files
    cols = columns or Columns()
    with writer_lock(root), staging_dir(root) as staging:
        finish_delete(root)
        existing = read_field_shards(root) if is_field_shards(root) else None
        n = _shard_count(root, num_shards, existing)
        requests = _requests(fields, existing, root, device)
        parts = partition_corpus(corpus, staging, n, columns=cols)
        if existing is None and not (root / BUILDING).is_file():
            payload = {"shard_kind": FIELDS_SHARD_KIND, "hash": HASH, "num_shards": n}
            write_json_atomic(root / BUILDING, payload)
        codebooks = _codebooks(root, corpus, requests, existing, n, cols, options)
        for shard, part in enumerate(parts):
            if part is None:
                continue
            try:
                index_fields(
                    part,
                    shard_dir(root, shard),
                    requests,
                    columns=cols,
                    device=device,
                    progress=progress,
                    codebooks=codebooks,
                    **options,
                )
            except InputError as exc:  # name the user's file and row, not the shard's part
                raise _in_user_terms(exc, part, Path(corpus), shard, n, cols) from exc
        committed = _commit(root, n, existing)
    counts: dict[str, int] = {}
    for _, folder, manifest in shard_layout(root, committed):
        for spec in manifest.fields:
            counts[spec.name] = counts.get(spec.name, 0) + _field_documents(folder, spec)
    return {spec.name: counts.get(spec.name, 0) for spec in committed.fields}


def _codebooks(
    root: Path,
    corpus: str | Path,
    requests: list[FieldRequest],
    existing: FieldShards | None,
    n: int,
    cols: Any,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Field name -> the residual codebook every shard codes that new vector field with
    (``latemm.index.fields.field_codebook``). A field the collection already records keeps the
    codebooks its shards hold."""
    from latemm.index.fields import field_codebook

    recorded = {spec.name for spec in existing.fields} if existing is not None else set()
    codebooks = {}
    for req in requests:
        if req.name in recorded:
            continue
        folders = [shard_dir(root, s) / "fields" / req.name for s in range(n)]
        codebook = field_codebook(corpus, req, requests, folders, columns=cols, **options)
        if codebook is not None:
            codebooks[req.name] = codebook
    return codebooks


_ROW = re.compile(r"\b(rows?) (\d+)")


def _in_user_terms(
    exc: InputError, part: Path, corpus: Path, shard: int, n: int, cols: Any
) -> InputError:
    """``exc`` about shard ``shard``'s part of the corpus, naming the user's file and row
    instead (the part holds that shard's rows in their order); ``exc`` if it names no part."""
    import pyarrow.parquet as pq

    text = str(exc)
    if str(part) not in text:
        return exc
    ids = [str(d) for d in pq.read_table(corpus, columns=[cols.id]).column(cols.id).to_pylist()]
    rows = np.flatnonzero(assign_shards(ids, n) == shard)
    head, _, tail = text.partition(str(part))

    def user_row(match: re.Match[str]) -> str:
        i = int(match.group(2))
        return f"{match.group(1)} {rows[i] if 0 <= i < rows.size else i}"

    tail = _ROW.sub(user_row, tail, count=1).replace(str(part), str(corpus))
    return type(exc)(f"{head}{corpus}{tail}")


def _field_documents(folder: Path, spec: FieldSpec) -> int:
    if spec.kind == "bm25":
        return int(spec.options.get("documents", 0))
    return len(field_maintenance.held_ids(folder, spec))


def _commit(root: Path, n: int, existing: FieldShards | None) -> FieldShards:
    """Commit ``shards.json`` with every shard's pages and the fields the shards hold (in
    the order they were first added)."""
    probe = FieldShards(n, (), (0,) * n)
    layout = shard_layout(root, probe)
    if not layout and existing is None:
        raise InputError(f"no shard of {root} was built; the corpus has no rows")
    specs: dict[str, FieldSpec] = {s.name: s for s in (existing.fields if existing else ())}
    for _, _, manifest in layout:
        for spec in manifest.fields:
            specs.setdefault(spec.name, collection_spec(spec))
    documents = [0] * n
    for shard, folder, manifest in layout:
        held: set[str] = set()
        for spec in manifest.fields:
            held |= field_maintenance.held_ids(folder, spec)
        documents[shard] = len(held)
    generation = existing.generation + 1 if existing is not None else 1
    committed = FieldShards(n, tuple(specs.values()), tuple(documents), generation)
    write_json_atomic(root / SHARDS_MANIFEST, committed.to_dict())
    (root / BUILDING).unlink(missing_ok=True)
    return committed


# ------------------------------------------------------------------------------ maintaining
def finish_delete(root: Path) -> int:
    """Finish a recorded delete (``deleting.json``) in every shard, recount, drop the record;
    the caller holds the collection's writer lock. Returns the ids it held (0: none)."""
    if not (root / DELETING).is_file() or not is_field_shards(root):
        return 0
    shards = read_field_shards(root)
    ids = sorted(pending_deletes(root))
    by_shard: dict[int, list[str]] = {}
    for doc_id, shard in zip(ids, assign_shards(ids, shards.num_shards), strict=True):
        by_shard.setdefault(int(shard), []).append(doc_id)
    for shard, shard_ids in sorted(by_shard.items()):
        if is_fields_index(shard_dir(root, shard)):
            field_maintenance.delete(shard_dir(root, shard), shard_ids, missing_ok=True)
    _commit(root, shards.num_shards, shards)
    (root / DELETING).unlink()
    return len(ids)


def delete_field_shards(
    index_dir: str | Path, doc_ids: Sequence[Any], *, missing_ok: bool = False
) -> int:
    """Delete documents by id from every field of a sharded collection, each id from its
    shard. The ids are recorded in ``deleting.json`` first: readers leave them out until the
    delete is done, and a delete cut short is finished by the next writer. An id no shard
    holds is an error naming it (nothing is deleted), unless ``missing_ok``."""
    root = Path(index_dir)
    read_field_shards(root)
    ids = list(dict.fromkeys(str(d) for d in doc_ids))
    with writer_lock(root):
        if finish_delete(root):
            warnings.warn(f"{root}: finished a delete that was cut short", stacklevel=2)
        shards = read_field_shards(root)
        held: dict[int, set[str]] = {}
        found = []
        for doc_id in ids:
            shard = shard_of(doc_id, shards.num_shards)
            if shard not in held:
                held[shard] = _held(shard_dir(root, shard))
            if doc_id in held[shard]:
                found.append(doc_id)
            elif not missing_ok:
                raise InputError(
                    f"doc_id {doc_id!r} is in no field of {root} (it would be in shard "
                    f"{shard_name(shard)}); nothing was deleted (--missing-ok skips such ids)"
                )
        if found:
            payload = {"generation": shards.generation, "doc_ids": found}
            write_json_atomic(root / DELETING, payload)
            finish_delete(root)
    return len(found)


def _held(folder: Path) -> set[str]:
    if not is_fields_index(folder):
        return set()
    out: set[str] = set()
    for spec in read_fields(folder).fields:
        out |= field_maintenance.held_ids(folder, spec)
    return out


def compact_field_shards(index_dir: str | Path) -> int:
    """Rewrite every shard's vector fields without their deleted documents; returns the new
    generation of ``shards.json``. An unfinished delete is finished first."""
    root = Path(index_dir)
    read_field_shards(root)
    with writer_lock(root):
        finish_delete(root)
        shards = read_field_shards(root)
        for _, folder, _ in shard_layout(root, shards):
            field_maintenance.compact(folder)
        return _commit(root, shards.num_shards, shards).generation


# ------------------------------------------------------------------------------ inspecting
def field_shards_stats(index_dir: str | Path) -> dict[str, Any]:
    """``latemm info`` of a sharded collection: its summary, each field's documents over the
    shards, each shard's fields."""
    from index_store import Index
    from latemm.index.fields import open_field

    root = Path(index_dir)
    shards = read_field_shards(root)
    per_field: dict[str, int] = {}
    per_shard = []
    disk = 0
    for shard, folder, manifest in shard_layout(root, shards):
        fields = {}
        for spec in manifest.fields:
            count = _field_documents(folder, spec)
            fields[spec.name] = count
            per_field[spec.name] = per_field.get(spec.name, 0) + count
            if spec.kind != "bm25" and (folder / "fields" / spec.name / "manifest.json").is_file():
                opened = open_field(folder, spec, verify="none")
                assert isinstance(opened, Index)
                disk += int(opened.stats().get("disk_bytes") or 0)
        per_shard.append(
            {"name": shard_name(shard), "documents": shards.documents[shard], "fields": fields}
        )
    report: dict[str, Any] = {
        "path": str(root),
        "kind": "sharded-fields",
        "num_shards": shards.num_shards,
        "generation": shards.generation,
        "documents": sum(shards.documents),
        "fields": [
            {**spec.to_dict(), "stats": {"documents": per_field.get(spec.name, 0)}}
            for spec in shards.fields
        ],
        "vector_disk_bytes": disk,
        "shards": per_shard,
    }
    pending = hidden_ids(root, shards)
    if pending is not None:  # searches leave these out; the next writer finishes the delete
        report["unfinished_delete"] = len(pending)
    return report


def verify_field_shards(index_dir: str | Path) -> list[str]:
    """Every problem of every shard's fields (files, checksums), ids in the wrong shard,
    counts that disagree with ``shards.json``, each naming its shard. Empty means intact."""
    root = Path(index_dir)
    links = find_links(root)
    if links:
        return links
    try:
        shards = read_field_shards(root)
    except (IndexCorruptError, IndexFormatError, InputError) as exc:
        return [str(exc)]
    problems = [
        f"{root / 'shards' / name}: a shard folder {SHARDS_MANIFEST} does not name (it records "
        f"{shards.num_shards} shards; was num_shards edited?): its documents are invisible"
        for name in extra_shards(root, shards.num_shards)
    ]
    if (root / DELETING).is_file():
        problems.append(
            f"{root / DELETING}: a delete of {len(pending_deletes(root))} documents was cut "
            "short (searches already leave them out); the next `latemm delete`, `compact` or "
            "`index` finishes it"
        )
    for shard in range(shards.num_shards):
        folder, name = shard_dir(root, shard), shard_name(shard)
        if not is_fields_index(folder):
            if shards.documents[shard]:
                problems.append(f"shard {name}: {folder} is missing or has no {FIELDS_FILE}")
            continue
        problems += [f"shard {name}: {p}" for p in verify_fields(folder)]
        try:
            held = _held(folder)
        except (IndexCorruptError, IndexFormatError) as exc:
            problems.append(f"shard {name}: {exc}")
            continue
        strays = sorted(d for d in held if shard_of(d, shards.num_shards) != shard)
        if strays:
            problems.append(
                f"shard {name}: holds {len(strays)} documents (first {strays[0]!r}) that "
                f"{shards.num_shards} shards route elsewhere (was num_shards edited?)"
            )
        if len(held) != shards.documents[shard] and not (root / DELETING).is_file():
            problems.append(
                f"shard {name}: holds {len(held)} documents, {SHARDS_MANIFEST} records "
                f"{shards.documents[shard]} (an ingest was interrupted before its commit; "
                "re-run it to finish)"
            )
    return problems
