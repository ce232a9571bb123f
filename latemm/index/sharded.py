"""Sharded indexes: N ordinary indexes under one directory, named by one atomic manifest.

Layout::

    DIR/shards.json             the commit point: format version, shard names, the shared
                                IndexConfig (with the encoder), documents per shard, generation
    DIR/shards/shard-0000/      an ordinary index (``index_store``)
    DIR/shards/shard-0001/      ...

A document lives in shard ``shard_of(doc_id, N)`` (the first 8 bytes of the BLAKE2b digest of
its UTF-8 id, mod N): re-runs and appends send every id to the same shard, so no id is ever in
two shards and ``on_existing`` (skip/upsert) keeps working per shard.

Searching scatters the query batch over the shards (in this process, or on Ray actors that the
caller builds with ``latemm.runs.distributed`` and hands in) and merges the shards' top-k by final
score, ties by doc_id, which is how ``Retriever`` orders one index: the merge is exactly the top-k of one index over the same
corpus whenever each shard's own top-k is exact.

Imports ``index_store``, ``latemm.data.io`` and ``latemm.index.pipeline``; never Ray.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index_store import Index, IndexConfig, create
from index_store.errors import IndexCorruptError, IndexFormatError, InputError
from index_store.fsio import find_links, read_json_object, refuse_links, write_json_atomic
from index_store.housekeeping import acquire_lock, release_lock
from latemm.data.io import Columns, open_dataset
from latemm.encoders.base import check_recorded
from latemm.index.pipeline import IndexReport, index_corpus, shard_codebook

SHARDS_MANIFEST = "shards.json"
SHARDS_FORMAT_VERSION = 1
# A sharded multi-field collection (``latemm.index.field_shards``) records format_version 2 and
# ``"shard_kind": "fields"``: latemm versions that read only ordinary shards refuse it by its
# version, and ordinary sharded indexes keep version 1 (old ones open as they are).
FIELDS_SHARD_KIND = "fields"
HASH = "blake2b-64-mod-n"
# A first build records its N here before any shard is written (removed once shards.json is
# committed), so an interrupted first build can only be finished with the same N.
BUILDING = "building.json"
# A delete records its ids here before any shard changes; readers leave those ids out and the
# next writer finishes the delete.
DELETING = "deleting.json"
STAGING_PREFIX = ".staging"


# ------------------------------------------------------------------------------ assignment
def shard_of(doc_id: str, num_shards: int) -> int:
    """The shard of one doc_id: BLAKE2b (8-byte digest) of its UTF-8 bytes, mod ``num_shards``.
    Stable across processes, machines and Python versions (unlike ``hash``)."""
    digest = hashlib.blake2b(str(doc_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def assign_shards(doc_ids: Sequence[str], num_shards: int) -> np.ndarray:
    """``shard_of`` for a batch of ids: (n,) int32."""
    return np.fromiter(
        (shard_of(d, num_shards) for d in doc_ids), dtype=np.int32, count=len(doc_ids)
    )


def shard_name(shard: int) -> str:
    return f"shard-{shard:04d}"


# ------------------------------------------------------------------------------ manifest
@dataclass(frozen=True)
class ShardManifest:
    """What ``DIR/shards.json`` records.

    Parameters
    ----------
    num_shards
        N; doc ids go to ``shard_of(doc_id, N)``.
    config
        The IndexConfig every shard shares, with the encoder's identity (``config.encoder``)
        that encodes queries for all of them.
    documents
        Live documents per shard, as of the last commit.
    generation
        Incremented by every commit of the manifest.
    """

    num_shards: int
    config: IndexConfig
    documents: tuple[int, ...]
    generation: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.num_shards, bool) or not isinstance(self.num_shards, int):
            raise InputError(f"num_shards must be an int, got {self.num_shards!r}")
        if self.num_shards < 1:
            raise InputError(f"num_shards must be >= 1, got {self.num_shards}")
        if len(self.documents) != self.num_shards:
            raise InputError(f"{len(self.documents)} document counts for {self.num_shards} shards")

    @property
    def names(self) -> list[str]:
        return [shard_name(s) for s in range(self.num_shards)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": SHARDS_FORMAT_VERSION,
            "kind": "sharded",
            "hash": HASH,
            "num_shards": self.num_shards,
            "shards": [
                {"name": name, "path": f"shards/{name}", "documents": docs}
                for name, docs in zip(self.names, self.documents, strict=True)
            ],
            "config": self.config.to_dict(),
            "documents": sum(self.documents),
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ShardManifest:
        return cls(
            num_shards=int(payload["num_shards"]),
            config=IndexConfig.from_dict(payload["config"]),
            documents=tuple(int(s["documents"]) for s in payload["shards"]),
            generation=int(payload.get("generation", 1)),
        )


def is_sharded(path: str | Path) -> bool:
    """True when ``path`` holds a sharded index (a ``shards.json``), of either kind of shard."""
    return (Path(path) / SHARDS_MANIFEST).is_file()


def is_field_shards(path: str | Path) -> bool:
    """True when ``path`` holds a sharded multi-field collection: a ``shards.json`` whose
    shards are fields indexes (``latemm.index.field_shards``), not ordinary ones."""
    manifest = Path(path) / SHARDS_MANIFEST
    if not manifest.is_file():
        return False
    try:
        return read_json_object(manifest).get("shard_kind") == FIELDS_SHARD_KIND
    except (IndexCorruptError, InputError):
        return False  # read_manifest names the damage


def is_unfinished_build(path: str | Path) -> bool:
    """True when ``path`` holds what a first sharded build leaves before its commit: a
    ``building.json`` or a ``shards/`` folder, but no ``shards.json`` yet."""
    root = Path(path)
    return not is_sharded(root) and ((root / BUILDING).is_file() or (root / "shards").is_dir())


def unfinished_build_message(root: str | Path) -> str:
    """What a folder left by an interrupted first sharded build is, and how to finish it."""
    recorded = _building_shards(Path(root))
    n, hint = str(recorded) if recorded is not None else "N", ""
    if is_unfinished_field_build(root):
        return (
            f"{root} is an unfinished sharded multi-field collection: a first `latemm index "
            f"--field ... --shards {n}` build was interrupted before its commit "
            f"({SHARDS_MANIFEST} is missing). Re-run it with the same --field flags to finish "
            "it (committed shards are kept), or delete the folder"
        )
    if recorded is None:  # left by a build that did not record its N
        found = extra_shards(root, 0)
        hint = f"; shards/ holds {len(found)} shard folders, up to {found[-1]}" if found else ""
    return (
        f"{root} is an unfinished sharded index: a first `latemm index --shards {n}` build was "
        f"interrupted before its commit ({SHARDS_MANIFEST} is missing{hint}). Re-run `latemm "
        f"index CORPUS --index {root} --shards {n}` to finish it (committed shards are kept), "
        "or delete the folder"
    )


def is_unfinished_field_build(path: str | Path) -> bool:
    """True when ``path`` holds an interrupted first build of a sharded multi-field
    collection (its ``building.json`` records ``"shard_kind": "fields"``)."""
    root = Path(path)
    if is_sharded(root) or not (root / BUILDING).is_file():
        return False
    try:
        return read_json_object(root / BUILDING).get("shard_kind") == FIELDS_SHARD_KIND
    except (IndexCorruptError, InputError):
        return False


def _building_shards(root: Path) -> int | None:
    """The N a first build recorded in ``building.json`` (None when there is none)."""
    path = root / BUILDING
    if not path.is_file():
        return None
    payload = read_json_object(path)
    n = payload.get("num_shards")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise IndexCorruptError(f"{path} is malformed: num_shards {n!r} is not a positive int")
    return n


def read_manifest(root: str | Path) -> ShardManifest:
    """Read ``DIR/shards.json``; errors name the file and what is wrong with it."""
    path = Path(root) / SHARDS_MANIFEST
    refuse_links(root)  # an index is untrusted data: nothing in it may point outside
    if not path.is_file() and is_unfinished_build(root):
        raise IndexCorruptError(unfinished_build_message(root))
    if not path.is_file():
        raise IndexCorruptError(
            f"{root} is not a sharded latemm index ({SHARDS_MANIFEST} is missing); build one with "
            "`latemm index CORPUS --index DIR --shards N`"
        )
    payload = read_json_object(path)
    if payload.get("shard_kind") == FIELDS_SHARD_KIND:
        raise InputError(
            f"{root} is a sharded multi-field collection (named fields in every shard), not a "
            "sharded index of one encoder: add pages with --field NAME=ENCODER (or without "
            "--encoder, to every recorded field)"
        )
    version = payload.get("format_version")
    if version != SHARDS_FORMAT_VERSION or payload.get("hash") != HASH:
        raise IndexFormatError(
            f"{path} has format_version {version} and hash {payload.get('hash')!r}; this latemm "
            f"reads version {SHARDS_FORMAT_VERSION} with {HASH!r}"
        )
    try:
        return ShardManifest.from_dict(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexCorruptError(f"{path} is malformed: {exc!r}") from exc


def write_manifest(root: str | Path, manifest: ShardManifest) -> None:
    """Commit ``DIR/shards.json`` atomically (temporary file, fsync, rename)."""
    write_json_atomic(Path(root) / SHARDS_MANIFEST, manifest.to_dict())


def shard_dirs(root: str | Path, manifest: ShardManifest) -> list[Path]:
    return [Path(root) / "shards" / name for name in manifest.names]


def extra_shards(root: str | Path, num_shards: int) -> list[str]:
    """Shard folders under ``DIR/shards`` beyond the ``num_shards`` the manifest names: their
    documents would be invisible to search (an edited ``num_shards``)."""
    folder = Path(root) / "shards"
    if not folder.is_dir():
        return []
    names = set(shard_name(s) for s in range(num_shards))
    return sorted(
        c.name for c in folder.iterdir() if c.name.startswith("shard-") and c.name not in names
    )


def check_layout(root: str | Path, manifest: ShardManifest) -> None:
    """Refuse a sharded index whose folder holds more shards than ``shards.json`` names."""
    extra = extra_shards(root, manifest.num_shards)
    if extra:
        raise IndexCorruptError(
            f"{Path(root) / SHARDS_MANIFEST} records {manifest.num_shards} shards, but "
            f"{Path(root) / 'shards'} also holds {', '.join(extra[:5])}: their documents would "
            "be invisible (was num_shards edited?). Restore the shards.json the index wrote; "
            "`latemm verify` lists the damage"
        )


# ------------------------------------------------------------------------------ writing
@contextmanager
def writer_lock(root: str | Path) -> Iterator[None]:
    """Hold the sharded index's writer lock (``DIR/LOCK``) for one writer's whole run: a
    second writer gets ``IndexLockedError``. Readers never take it. An unfinished delete
    (``deleting.json``) is finished first."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not an index directory; --index takes a directory")
    path.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(path)
    try:
        refuse_links(path)  # nothing is written or removed through a link out of the index
        for stale in path.glob(f"{STAGING_PREFIX}*"):  # a dead writer's partitions
            shutil.rmtree(stale, ignore_errors=True)
        if (path / DELETING).is_file() and is_sharded(path) and not is_field_shards(path):
            _finish_delete(path)  # a fields collection's writer finishes its own
        yield
    finally:
        release_lock(lock)


@contextmanager
def staging_dir(root: str | Path) -> Iterator[Path]:
    """A staging folder of this writer's own (``DIR/.staging-XXXX``), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_shard(root: str | Path, shard: int, *, verify: str = "fast") -> Index:
    """Open one shard; a missing or damaged shard raises ``IndexCorruptError`` naming it."""
    path = Path(root) / "shards" / shard_name(shard)
    try:
        return Index.open(path, verify=verify)
    except IndexCorruptError as exc:
        raise IndexCorruptError(
            f"{root}: shard {shard_name(shard)} ({path}) cannot be opened: {exc}. Rebuild it by "
            f"re-running `latemm index` into {root} (indexing resumes and routes each doc_id to "
            "the same shard)"
        ) from exc


# ------------------------------------------------------------------------------ building
def partition_corpus(
    corpus: str | Path, out_dir: str | Path, num_shards: int, *, columns: Columns | None = None
) -> list[Path | None]:
    """Split a Parquet corpus into one Parquet file per shard (``out_dir/shard-0000.parquet``,
    rows in their original order, columns unchanged); None for a shard that gets no rows.

    Null and duplicate ids are errors naming the corpus file and row, before any index is
    touched."""
    source = Path(corpus)
    cols = columns or Columns()
    dataset = open_dataset(source)
    if cols.id not in dataset.schema.names:
        raise InputError(
            f"{source}: no {cols.id!r} column (columns: {', '.join(dataset.schema.names)}); "
            "name the id column with --id-column"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    row_of: dict[str, int] = {}
    row = 0
    try:
        for record_batch in dataset.to_batches(batch_size=1024):
            table = pa.Table.from_batches([record_batch])
            id_column = table.column(cols.id)
            if id_column.null_count:
                bad = int(np.flatnonzero(pc.is_null(id_column).to_numpy(zero_copy_only=False))[0])
                raise InputError(
                    f"{source}, row {row + bad}: {cols.id!r} is null; every row needs an id"
                )
            ids = [str(v) for v in id_column.to_pylist()]
            for i, doc_id in enumerate(ids):
                if doc_id in row_of:
                    raise InputError(
                        f"{source}, rows {row_of[doc_id]} and {row + i}: duplicate doc_id "
                        f"{doc_id!r}; ids must be unique"
                    )
                row_of[doc_id] = row + i
            shards = assign_shards(ids, num_shards)
            for shard in np.unique(shards):
                part = table.filter(pa.array(shards == shard))
                if int(shard) not in writers:
                    path = out / f"{shard_name(int(shard))}.parquet"
                    writers[int(shard)] = pq.ParquetWriter(path, part.schema)
                writers[int(shard)].write_table(part.cast(writers[int(shard)].schema))
            row += table.num_rows
    finally:
        for writer in writers.values():
            writer.close()
    if row == 0:
        raise InputError(f"{source} has no rows")
    return [out / f"{shard_name(s)}.parquet" if s in writers else None for s in range(num_shards)]


def prepare(root: str | Path, num_shards: int | None) -> tuple[int, ShardManifest | None]:
    """The shard count to build with and the existing manifest (None for a new index).

    Call it holding ``writer_lock``. An existing sharded index keeps its N (a different
    ``--shards`` is an error: ids would move between shards); so does an interrupted first
    build, whose N is recorded in ``building.json`` before any shard is written. An ordinary
    index in the folder is an error too."""
    path = Path(root)
    refuse_links(path)  # .staging and the shards are written through no link out of the index
    if (path / "manifest.json").is_file():
        raise InputError(
            f"{path} holds an ordinary (unsharded) index; index into a new folder to shard, or "
            "leave out --shards/--ray to add to it"
        )
    if (path / "fields.json").is_file():
        raise InputError(
            f"{path} holds a multi-field index, which is not sharded; leave out --shards/--ray "
            "to add to it, or index into a new folder to shard"
        )
    existing = read_manifest(path) if is_sharded(path) else None
    if existing is not None:
        if num_shards is not None and num_shards != existing.num_shards:
            raise InputError(
                f"{path} has {existing.num_shards} shards, not {num_shards}; doc ids are routed "
                f"by hash mod N, so N is fixed: pass --shards {existing.num_shards} or a new folder"
            )
        check_layout(path, existing)
        return existing.num_shards, existing
    recorded = _building_shards(path)
    if recorded is not None and is_unfinished_field_build(path):
        raise InputError(unfinished_build_message(path))
    if recorded is not None:
        if num_shards is not None and num_shards != recorded:
            raise InputError(
                f"{path} holds an interrupted first build of {recorded} shards ({BUILDING}); "
                f"doc ids are routed by hash mod N, so finish it with --shards {recorded}, or "
                "delete the folder to start over with another N"
            )
        return recorded, None
    if num_shards is None or num_shards < 1:
        raise InputError(f"--shards must be a positive number of shards, got {num_shards}")
    check_new_folder(path)
    _check_built_shards(path, num_shards)
    return num_shards, None


def check_new_folder(path: Path) -> None:
    """A first sharded build goes into a new or empty folder (or one an earlier build left):
    never among a user's files."""
    if not path.is_dir() or is_sharded(path) or (path / BUILDING).is_file():
        return
    foreign = sorted(
        c.name
        for c in path.iterdir()
        if c.name not in ("LOCK", "shards") and not c.name.startswith(STAGING_PREFIX)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise InputError(
            f"{path} is not empty and is not a latemm index (no {SHARDS_MANIFEST}; it holds "
            f"{shown}); refusing to build a sharded index there. Choose a new or empty directory"
        )


def record_building(root: str | Path, num_shards: int) -> None:
    """Record a first build's N (``building.json``) before its first shard is written."""
    path = Path(root) / BUILDING
    if not path.is_file():
        payload = {"format_version": SHARDS_FORMAT_VERSION, "hash": HASH, "num_shards": num_shards}
        write_json_atomic(path, payload)


def _check_built_shards(root: Path, num_shards: int) -> None:
    """Shards an older, unrecorded interrupted build left must route by the same N."""
    extra = extra_shards(root, num_shards)
    if extra:
        raise InputError(
            f"{root} holds shards of an interrupted build with more than {num_shards} shards "
            f"({', '.join(extra[:3])}); re-run with its --shards, or delete the folder"
        )
    for shard in range(num_shards):
        folder = root / "shards" / shard_name(shard)
        if not (folder / "manifest.json").is_file():
            continue
        for doc_id in Index.open(folder, verify="none").doc_ids():
            if shard_of(doc_id, num_shards) != shard:
                raise InputError(
                    f"{root} holds shards of an interrupted build with another number of "
                    f"shards ({folder.name} holds {doc_id!r}, which --shards {num_shards} routes "
                    "elsewhere); re-run with its --shards, or delete the folder"
                )


def commit_shards(
    root: str | Path,
    num_shards: int,
    *,
    encoder_info: dict[str, Any] | None,
    existing: ShardManifest | None,
) -> ShardManifest:
    """After the shards are built: create the shards that got no documents (empty indexes with
    the shared config, so every shard opens), then commit ``shards.json`` with the counts.

    Until this commit, readers keep seeing the previous manifest's shard list and config."""
    dirs = [Path(root) / "shards" / shard_name(s) for s in range(num_shards)]
    built = [d for d in dirs if (d / "manifest.json").is_file()]
    if not built:
        raise InputError(f"no shard of {root} was built; the corpus has no rows")
    config = Index.open(built[0], verify="none").config
    if encoder_info is not None:
        config = replace(config, encoder=encoder_info)
    elif existing is not None:
        config = replace(config, encoder=existing.config.encoder)
    for shard_dir in dirs:
        if shard_dir in built:
            other = Index.open(shard_dir, verify="none").config
            if other != config:
                raise IndexFormatError(
                    f"{shard_dir} was built with {other.to_dict()}, the other shards with "
                    f"{config.to_dict()}; every shard must share one config"
                )
        else:  # a shard no document routes to (yet): a valid, empty index
            with create(shard_dir, config) as writer:
                writer.commit()
    documents = tuple(len(Index.open(d, verify="none")) for d in dirs)
    generation = existing.generation + 1 if existing is not None else 1
    manifest = ShardManifest(num_shards, config, documents, generation)
    write_manifest(root, manifest)
    (Path(root) / BUILDING).unlink(missing_ok=True)
    return manifest


def index_sharded(
    corpus: str | Path,
    index_dir: str | Path,
    *,
    num_shards: int | None = None,
    encoder: Any = None,
    columns: Columns | None = None,
    progress: bool = True,
    **options: Any,
) -> IndexReport:
    """Add a Parquet corpus to a sharded index in this process: split it by ``shard_of``, run
    ``index_corpus`` on each part into its shard, then commit ``shards.json``.

    Options (``dtype``, ``faiss_factory``, ``on_existing``, ``pool_factor``, ...) are
    ``index_corpus``'s. Re-running resumes (each shard skips its committed ids)."""
    root = Path(index_dir)
    if (root / "manifest.json").is_file() or (root / "fields.json").is_file():
        prepare(root, num_shards)  # the error naming the other kind of index, before any lock
    check_new_folder(root)  # before the lock file is created among a user's files
    if num_shards is not None and (isinstance(num_shards, bool) or num_shards < 1):
        raise InputError(f"--shards must be a positive number of shards, got {num_shards}")
    with writer_lock(root), staging_dir(root) as staging:
        return _index_sharded(
            corpus, root, num_shards, encoder, columns, progress, staging, options
        )


def _index_sharded(
    corpus: str | Path,
    root: Path,
    num_shards: int | None,
    encoder: Any,
    columns: Columns | None,
    progress: bool,
    staging: Path,
    options: dict[str, Any],
) -> IndexReport:
    n, existing = prepare(root, num_shards)
    if existing is not None and encoder is not None:
        check_recorded(existing.config.encoder, encoder.info, root)
    added = skipped = rejected = 0
    parts = partition_corpus(corpus, staging, n, columns=columns)
    codebook = None
    if existing is None:
        record_building(root, n)
        folders = [root / "shards" / shard_name(s) for s in range(n)]
        options, codebook = shard_codebook(
            folders, corpus, options, encoder=encoder, columns=columns
        )
    for shard, part in enumerate(parts):
        if part is None:
            continue
        report = index_corpus(
            part,
            root / "shards" / shard_name(shard),
            encoder=encoder,
            columns=columns,
            progress=progress,
            codebook=codebook,
            **options,
        )
        added, skipped = added + report.added, skipped + report.skipped
        rejected += report.rejected
    info = encoder.info.to_dict() if encoder is not None else None
    manifest = commit_shards(root, n, encoder_info=info, existing=existing)
    return IndexReport(added, skipped, sum(manifest.documents), manifest.generation, rejected)


# ------------------------------------------------------------------------------ maintaining
def pending_deletes(root: str | Path) -> set[str]:
    """The ids of a delete that was recorded but not finished (``deleting.json``): readers
    leave them out, the next writer finishes the delete."""
    path = Path(root) / DELETING
    if not path.is_file():
        return set()
    ids = read_json_object(path).get("doc_ids")
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        raise IndexCorruptError(f"{path} is malformed: 'doc_ids' is not a list of ids")
    return set(ids)


def _recount(root: Path, manifest: ShardManifest) -> ShardManifest:
    """Commit ``shards.json`` with each shard's current document count."""
    documents = tuple(len(open_shard(root, s, verify="none")) for s in range(manifest.num_shards))
    updated = replace(manifest, documents=documents, generation=manifest.generation + 1)
    write_manifest(root, updated)
    return updated


def _shard_writer(root: Path, shard: int) -> Any:
    """The writer of one committed shard, with the settings it was created with."""
    return create(
        root / "shards" / shard_name(shard), open_shard(root, shard, verify="none").config
    )


def _finish_delete(root: Path) -> ShardManifest:
    """Apply the recorded delete to every shard (ids already gone are fine), recount, and drop
    the record. Holds the writer lock (``writer_lock``)."""
    import warnings

    manifest = read_manifest(root)
    ids = sorted(pending_deletes(root))
    warnings.warn(
        f"{root}: finishing a delete of {len(ids)} documents that was cut short",
        stacklevel=3,
    )
    by_shard: dict[int, list[str]] = {}
    for doc_id, shard in zip(ids, assign_shards(ids, manifest.num_shards), strict=True):
        by_shard.setdefault(int(shard), []).append(doc_id)
    for shard, shard_ids in sorted(by_shard.items()):
        with _shard_writer(root, shard) as writer:
            writer.delete(shard_ids, missing_ok=True)
            writer.commit()
    manifest = _recount(root, manifest)
    (root / DELETING).unlink()
    return manifest


def delete_sharded(root: str | Path, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
    """Delete documents by id from a sharded index: each id goes to its shard. The ids are
    recorded in ``deleting.json`` first, so readers never see a half-done delete and a delete
    cut short is finished by the next writer. Returns the number of documents deleted; an id
    the index does not hold is an error (``missing_ok`` skips it)."""
    path = Path(root)
    manifest = read_manifest(path)
    ids = list(dict.fromkeys(str(d) for d in doc_ids))
    with writer_lock(path):
        manifest = read_manifest(path)
        check_layout(path, manifest)
        shards = assign_shards(ids, manifest.num_shards)
        opened: dict[int, Index] = {}
        held = []
        for doc_id, shard in zip(ids, shards, strict=True):
            if int(shard) not in opened:
                opened[int(shard)] = open_shard(path, int(shard), verify="none")
            if doc_id in opened[int(shard)]:
                held.append(doc_id)
            elif not missing_ok:
                raise InputError(
                    f"{path}: no document {doc_id!r} to delete (it would be in shard "
                    f"{shard_name(int(shard))}); check the id, or pass --missing-ok"
                )
        if not held:
            return 0
        write_json_atomic(path / DELETING, {"generation": manifest.generation, "doc_ids": held})
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our own record, not one left by a crash
            _finish_delete(path)
    return len(held)


def compact_sharded(root: str | Path) -> int:
    """Rewrite every shard without its deleted documents; returns the new generation of
    ``shards.json``."""
    path = Path(root)
    read_manifest(path)
    with writer_lock(path):
        manifest = read_manifest(path)
        check_layout(path, manifest)
        for shard in range(manifest.num_shards):
            with _shard_writer(path, shard) as writer:
                writer.compact()
        return _recount(path, manifest).generation


# ------------------------------------------------------------------------------ inspecting
def sharded_stats(root: str | Path) -> dict[str, Any]:
    """``latemm info`` of a sharded index: the manifest's summary and each shard's stats."""
    manifest = read_manifest(root)
    shards = [open_shard(root, s).stats() for s in range(manifest.num_shards)]
    return {
        "path": str(root),
        "kind": "sharded",
        "num_shards": manifest.num_shards,
        "generation": manifest.generation,
        "documents": sum(s["documents"] for s in shards),
        "vectors": sum(s["vectors"] for s in shards),
        "dim": manifest.config.dim,
        "dtype": manifest.config.dtype,
        "faiss_factory": manifest.config.faiss_factory,
        "encoder": manifest.config.encoder,
        "disk_bytes": sum(s["disk_bytes"] for s in shards),
        "shards": shards,
    }


def verify_sharded(root: str | Path) -> list[str]:
    """Every problem of every shard (missing shard, files, checksums, counts), each naming
    its shard. Empty means intact."""
    from index_store import verify

    links = find_links(root)
    if links:  # reported, and nothing is read through them
        return links
    if is_unfinished_build(root):
        return [unfinished_build_message(root)]
    try:
        manifest = read_manifest(root)
    except (IndexCorruptError, IndexFormatError) as exc:
        return [str(exc)]
    problems = [
        f"{Path(root) / 'shards' / name}: a shard folder {SHARDS_MANIFEST} does not name (it "
        f"records {manifest.num_shards} shards; was num_shards edited?): its documents are "
        "invisible to search"
        for name in extra_shards(root, manifest.num_shards)
    ]
    if (Path(root) / DELETING).is_file():
        problems.append(
            f"{Path(root) / DELETING}: a delete of {len(pending_deletes(root))} documents was "
            "cut short (searches already leave them out); the next `latemm delete`, `compact` "
            "or `index` finishes it"
        )
    for shard, path in enumerate(shard_dirs(root, manifest)):
        name = shard_name(shard)
        if not (path / "manifest.json").is_file():
            problems.append(f"shard {name}: {path} is missing or has no manifest.json")
            continue
        try:
            problems += [f"shard {name}: {p}" for p in verify(path)]
            found = len(Index.open(path, verify="none"))
        except (IndexCorruptError, IndexFormatError) as exc:
            problems.append(f"shard {name}: {exc}")
            continue
        strays = [
            d
            for d in Index.open(path, verify="none").doc_ids()
            if shard_of(d, manifest.num_shards) != shard
        ]
        if strays:
            problems.append(
                f"shard {name}: holds {len(strays)} documents (first {strays[0]!r}) that "
                f"{manifest.num_shards} shards route elsewhere: {SHARDS_MANIFEST}'s num_shards "
                "is not the one the index was built with (was it edited?)"
            )
        if found != manifest.documents[shard]:
            problems.append(
                f"shard {name}: holds {found} documents, {SHARDS_MANIFEST} records "
                f"{manifest.documents[shard]} (an ingest was interrupted before its commit; "
                "re-run it to finish)"
            )
    return problems
