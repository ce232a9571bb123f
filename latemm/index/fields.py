"""Named fields in one index: the layout on disk, and building (or extending) it.

A multi-field index ``DIR/`` holds ``DIR/fields.json`` (the commit point: format version and,
per field, its name, kind, what it reads, the encoder's identity and options) and one
sub-index per field under ``DIR/fields/<name>/``: an ``index_store`` index for ``multi``- and
``single``-vector fields, bm25s's own files for ``bm25`` fields (``latemm.index.bm25``). Pages a
field cannot read (no text for a text field, no image for an image field) are simply absent from it.
An index built before fields existed (``DIR/manifest.json``, no ``fields.json``) opens as one
field named ``default``. Searching is ``latemm.retrieval.field_search``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index_store import Index, create
from index_store.errors import (
    IndexCorruptError,
    IndexFormatError,
    InputError,
    LatemmError,
)
from index_store.fsio import (
    find_links,
    fsync_dir,
    index_path,
    read_json_object,
    refuse_links,
    write_json_atomic,
)
from latemm.encoders.base import is_compatible
from latemm.index.pagestore import (
    StoreRecord,
    add_pages,
    compact_pages,
    delete_pages,
    remove_stale_parts,
    verify_store,
)

FIELDS_FILE = "fields.json"
# 1: each vector field keeps its pages' text and image (written before the page store);
# 2: a page store (``pages``) holds them once. An index records the lowest version that reads
# it (one without a page store keeps 1), so a latemm that reads only 1 refuses a page-store
# index with a clear error instead of opening it without its pages' content.
FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
KINDS = ("multi", "single", "bm25")
READS = ("text", "image", "image+text", "embedding")
LEGACY_FIELD = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# UniDoc-Bench's four paradigms: which fields each one searches (by what they read).
PRESETS = {
    "text-only": ("text",),
    "image-only": ("image",),
    "fusion": ("text", "image", "image+text", "embedding"),
    "joint": ("image+text",),
}


@dataclass(frozen=True)
class FieldSpec:
    """One field as recorded in ``fields.json``.

    Parameters
    ----------
    name
        Letters, digits, ``_`` and ``-`` (it names a folder and a run column ``score_<name>``).
    kind
        ``multi`` (FDE + faiss, MaxSim), ``single`` (one vector per page, faiss inner product)
        or ``bm25`` (bm25s over the text column).
    reads
        What the field encodes from a page: ``text``, ``image``, ``image+text`` or
        ``embedding`` (a precomputed column, ``options["embedding_column"]``).
    encoder
        ``EncoderInfo.to_dict()`` of its encoder; None for bm25 and precomputed vectors.
    options
        Kind-specific: ``embedding_column``; for bm25 the current build's ``dir``, ``files``,
        ``documents`` and ``tokenizer`` (``latemm.index.bm25.Tokenizer.to_dict()``; absent in fields
        built before it was recorded, which keep bm25s's English stop words without stemming).
    """

    name: str
    kind: str
    reads: str
    encoder: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InputError(
                f"field name {self.name!r}: use 1-64 letters, digits, '_' or '-' (it names a "
                "folder and a run column)"
            )
        if self.kind not in KINDS:
            raise InputError(f"field {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.reads not in READS:
            raise InputError(
                f"field {self.name!r}: reads must be one of {READS}, got {self.reads!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "reads": self.reads,
            "encoder": self.encoder,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FieldSpec:
        return cls(
            name=payload["name"],
            kind=payload["kind"],
            reads=payload["reads"],
            encoder=payload.get("encoder"),
            options=dict(payload.get("options") or {}),
        )


@dataclass(frozen=True)
class SearchDefaults:
    """The fusion a search of the index uses when it names none (``latemm tune --save``):
    the fields searched, the fusion and its settings, and how they were chosen (``tuned``:
    metric, folds, queries, cross-validated score). ``fields.json``'s ``search_defaults``."""

    fields: tuple[str, ...]
    fusion: str
    weights: Mapping[str, float] | None = None
    rrf_k: int | None = None
    normalization: str = "minmax"
    tuned: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from latemm.ranking import fusion as fusion_lib

        if not self.fields or not all(isinstance(n, str) for n in self.fields):
            raise InputError(f"search defaults name no fields (got {self.fields!r})")
        if self.fusion not in fusion_lib.FUSIONS:
            raise InputError(f"search defaults: unknown fusion {self.fusion!r}")
        if self.normalization not in fusion_lib.NORMALIZATIONS:
            raise InputError(f"search defaults: unknown normalization {self.normalization!r}")
        if self.rrf_k is not None and (
            isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, int) or self.rrf_k < 1
        ):
            raise InputError(
                f"search defaults: rrf_k must be a positive integer, not {self.rrf_k!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": list(self.fields),
            "fusion": self.fusion,
            "weights": None if self.weights is None else dict(self.weights),
            "rrf_k": self.rrf_k,
            "normalization": self.normalization,
            "tuned": dict(self.tuned),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchDefaults:
        weights = d.get("weights")
        return cls(
            tuple(d["fields"]),
            d["fusion"],
            None if weights is None else {str(k): float(v) for k, v in dict(weights).items()},
            d.get("rrf_k"),
            d.get("normalization", "minmax"),
            dict(d.get("tuned") or {}),
        )


@dataclass(frozen=True)
class FieldsManifest:
    """What ``fields.json`` holds: the fields, in the order they were added, and the search
    defaults ``latemm tune --save`` recorded (None: the built-in ones)."""

    fields: tuple[FieldSpec, ...]
    legacy: bool = False  # an index built before fields existed: one field at DIR itself
    pages: StoreRecord | None = None  # the page store (None: written before it existed)
    search_defaults: SearchDefaults | None = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def get(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise InputError(
            f"unknown field {name!r}; this index has field(s) {', '.join(self.names)}"
            + (
                f" (it was built before named fields: its one field is {LEGACY_FIELD!r})"
                if self.legacy
                else ""
            )
        )

    def with_field(self, spec: FieldSpec) -> FieldsManifest:
        kept = [f for f in self.fields if f.name != spec.name]
        position = next((i for i, f in enumerate(self.fields) if f.name == spec.name), len(kept))
        kept.insert(position, spec)
        return FieldsManifest(tuple(kept), pages=self.pages, search_defaults=self.search_defaults)

    def with_pages(self, pages: StoreRecord | None) -> FieldsManifest:
        return replace(self, pages=pages)

    def to_dict(self) -> dict[str, Any]:
        version = FORMAT_VERSION if self.pages is not None else LEGACY_FORMAT_VERSION
        out: dict[str, Any] = {
            "format_version": version,
            "fields": [f.to_dict() for f in self.fields],
        }
        if self.pages is not None:
            out["pages"] = self.pages.to_dict()
        if self.search_defaults is not None:  # an index never tuned keeps its file as it was
            out["search_defaults"] = self.search_defaults.to_dict()
        return out


def is_fields_index(index_dir: str | Path) -> bool:
    return (Path(index_dir) / FIELDS_FILE).is_file()


def read_fields(index_dir: str | Path) -> FieldsManifest:
    """The fields of an index: ``fields.json``, or one ``default`` field for an index built
    before fields existed."""
    root = Path(index_dir)
    path = root / FIELDS_FILE
    if not path.is_file():
        if (root / "manifest.json").is_file():
            return one_field(Index.open(root, verify="none").config)
        raise IndexCorruptError(
            f"{root} is not a latemm index (neither {FIELDS_FILE} nor manifest.json); create one "
            "with `latemm index CORPUS.parquet --index DIR --field NAME=ENCODER`"
        )
    refuse_links(root)  # an index is untrusted data: nothing in it may point outside
    payload = read_json_object(path)
    check_format_version(path, payload.get("format_version"))
    pages = None
    if "pages" in payload:
        try:
            pages = StoreRecord.from_dict(payload["pages"])
        except IndexCorruptError as exc:
            raise IndexCorruptError(f"{path}: {exc}") from exc
    specs = _recorded_specs(path, payload.get("fields"))
    return FieldsManifest(
        specs, pages=pages, search_defaults=_recorded_defaults(path, payload, specs)
    )


def one_field(config: Any) -> FieldsManifest:
    """The fields of an index of one encoder (``IndexConfig`` ``config``: a plain index, or each
    shard of a sharded one): one field, ``default``, at the index folder itself."""
    kind = "single" if getattr(config, "single_vector", False) else "multi"
    reads = _reads_of(None, config.encoder)
    return FieldsManifest((FieldSpec(LEGACY_FIELD, kind, reads, config.encoder),), True)


def check_format_version(path: Path, version: Any) -> None:
    """Refuse a ``fields.json`` whose ``format_version`` this latemm cannot read: a newer one
    (written by a newer latemm: upgrade) or one that is not a known version at all."""
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has format_version {version}, newer than this latemm reads (up to "
            f"{FORMAT_VERSION}); upgrade latemm (pip install -U latemm) to open this index"
        )
    if version not in (LEGACY_FORMAT_VERSION, FORMAT_VERSION) or isinstance(version, bool):
        raise IndexFormatError(
            f"{path} has format_version {version!r}; this latemm reads versions "
            f"{LEGACY_FORMAT_VERSION} to {FORMAT_VERSION}: the file is damaged, restore it "
            "from a backup or rebuild the index into a new folder"
        )


def _recorded_defaults(
    path: Path, payload: dict[str, Any], specs: tuple[FieldSpec, ...]
) -> SearchDefaults | None:
    """``fields.json``'s ``search_defaults`` (None when absent), or an ``IndexCorruptError``."""
    entry = payload.get("search_defaults")
    if entry is None:
        return None
    fix = 'remove the "search_defaults" entry (searches then use the built-in fusion) or re-run `latemm tune --save`'
    try:
        defaults = SearchDefaults.from_dict(entry)
    except (InputError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IndexCorruptError(f"{path}: search_defaults is damaged ({exc}); {fix}") from exc
    unknown = [n for n in defaults.fields if n not in {s.name for s in specs}]
    if unknown:
        raise IndexCorruptError(
            f"{path}: search_defaults name field(s) {', '.join(unknown)} the index does not have; {fix}"
        )
    return defaults


def write_search_defaults(index_dir: str | Path, defaults: SearchDefaults | None) -> None:
    """Record (None: remove) an index's search defaults in ``fields.json``, atomically, under
    the index's writer lock."""
    root = Path(index_dir)
    if not is_fields_index(root):
        raise InputError(
            f"{root} has no {FIELDS_FILE}: search defaults are kept by a multi-field index "
            "(`latemm index CORPUS --index DIR --field NAME=ENCODER ...`)"
        )
    with locked(root):
        manifest = read_fields(root)
        if defaults is not None:
            for name in defaults.fields:
                manifest.get(name)  # an unknown name raises, listing the fields
        manifest = replace(manifest, search_defaults=defaults)
        write_json_atomic(root / FIELDS_FILE, manifest.to_dict())


def _recorded_specs(path: Path, entries: Any) -> tuple[FieldSpec, ...]:
    """The fields ``fields.json`` lists, each named once, or an ``IndexCorruptError`` naming the
    file and what is damaged (``latemm verify`` reports it)."""
    fix = "the file is damaged: restore it from a backup, or rebuild the index into a new folder"
    if not isinstance(entries, list):
        raise IndexCorruptError(f'{path} has no "fields" list; {fix}')
    specs: list[FieldSpec] = []
    for i, entry in enumerate(entries):
        missing = [
            k for k in ("name", "kind", "reads") if not isinstance(entry, dict) or k not in entry
        ]
        if missing:
            raise IndexCorruptError(f"{path}: field entry {i} has no {', '.join(missing)}; {fix}")
        try:
            spec = FieldSpec.from_dict(entry)
        except (InputError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"{path}: field entry {i}: {exc}; {fix}") from exc
        if spec.name in (s.name for s in specs):
            raise IndexCorruptError(f"{path} lists field {spec.name!r} twice; {fix}")
        specs.append(spec)
    return tuple(specs)


def field_dir(index_dir: str | Path, spec: FieldSpec, legacy: bool = False) -> Path:
    """Where a field's sub-index lives (for bm25: its current build)."""
    if legacy:
        return Path(index_dir)
    base = index_path(index_dir, "fields", spec.name, what=f"field {spec.name!r}'s folder")
    if spec.kind != "bm25":
        return base
    return index_path(
        base, spec.options.get("dir"), what=f"{FIELDS_FILE}: bm25 field {spec.name!r}'s dir"
    )


def open_field(
    index_dir: str | Path, spec: FieldSpec, *, legacy: bool = False, verify: str = "fast"
) -> Any:
    """A field's sub-index opened for reading: an ``Index`` or a ``latemm.index.bm25.BM25Index``."""
    path = field_dir(index_dir, spec, legacy)
    if spec.kind == "bm25":
        from latemm.index.bm25 import BUILD_FORMAT, BM25Index

        version = spec.options.get("format", 1)
        if not isinstance(version, int) or version > BUILD_FORMAT:
            raise IndexFormatError(
                f"{Path(index_dir) / FIELDS_FILE}: bm25 field {spec.name!r} has build format "
                f"{version!r}, newer than this latemm reads (up to {BUILD_FORMAT}); upgrade "
                "latemm (pip install -U latemm) to open this index"
            )
        return BM25Index(path, spec.options["files"], tokenizer=bm25_tokenizer(spec), verify=verify)
    return Index.open(path, verify=verify)


def bm25_tokenizer(spec: FieldSpec) -> Any:
    """The ``latemm.index.bm25.Tokenizer`` a bm25 field records (the legacy one if it records
    none)."""
    from latemm.index.bm25 import Tokenizer

    return Tokenizer.from_dict(spec.options.get("tokenizer"))


def verify_fields(index_dir: str | Path) -> list[str]:
    """Every problem with a multi-field index's files (each sub-index's checksums, each bm25
    build's), field by field. Empty means intact."""
    from index_store import verify
    from latemm.index.bm25 import check_build

    links = find_links(index_dir)
    if links:  # reported, and nothing is read through them
        return links
    problems = []
    try:
        manifest = read_fields(index_dir)
    except (IndexCorruptError, IndexFormatError) as exc:
        return [str(exc)]
    fields = manifest.fields
    problems += verify_store(index_dir, manifest.pages)
    try:
        pending = read_journal(index_dir)
    except IndexCorruptError as exc:
        problems.append(str(exc))
        pending = None
    if pending is not None:
        problems.append(
            f"{Path(index_dir) / JOURNAL}: a delete of {len(pending)} document(s) was cut "
            "short, and some fields may still hold them; opening the index (a search, `latemm "
            "delete` or `latemm compact`) finishes it"
        )
    for spec in fields:
        try:  # a damaged field is reported, and the others are still checked
            path = field_dir(index_dir, spec)
            if spec.kind == "bm25":
                found = check_build(path, spec.options.get("files") or {}, full=True)
                if not path.is_dir():
                    found.append(f"{path}: the build folder {FIELDS_FILE} names is missing")
            elif not path.is_dir():
                found = [f"{path}: the field's sub-index folder is missing; rebuild the field"]
            else:  # a field that holds no page yet has no manifest
                found = verify(path) if (path / "manifest.json").is_file() else []
        except (IndexCorruptError, IndexFormatError) as exc:
            found = [str(exc)]
        problems += [f"field {spec.name!r}: {p}" for p in found]
    return problems


# ------------------------------------------------------------------------------ encoders
@dataclass(frozen=True)
class FieldRequest:
    """A field to build: ``source`` is ``bm25`` (or ``bm25:stemmer=NAME,stopwords=en|none``),
    ``embedding:COLUMN`` (precomputed vectors), a hub id or local folder, or an ``Encoder``;
    ``kind`` ``multi``, ``single`` or ``bm25``."""

    name: str
    source: Any
    kind: str = "multi"


def parse_field(text: str, kinds: Mapping[str, str] | None = None) -> FieldRequest:
    """``NAME=ENCODER`` (``--field``); ``single:ENCODER`` or ``kinds[NAME] == "single"`` for a
    single-vector field; ``NAME=bm25`` for BM25 (stemmed English; ``NAME=bm25:stemmer=none``
    and ``stopwords=none`` change the tokenizer, see ``latemm.index.bm25.parse_tokenizer``)."""
    name, sep, source = text.partition("=")
    name, source = name.strip(), source.strip()
    if not sep or not name or not source:
        raise InputError(
            f"--field {text!r}: expected NAME=ENCODER (a hub id, a local folder, bm25, or "
            "single:ENCODER), e.g. --field text=sentence-transformers/all-MiniLM-L6-v2"
        )
    kind = (kinds or {}).get(name, "multi")
    if source.startswith("single:"):
        kind, source = "single", source[len("single:") :]
    if source == "bm25" or source.startswith("bm25:"):
        kind = "bm25"
        if source != "bm25":
            from latemm.index.bm25 import parse_tokenizer

            parse_tokenizer(source[len("bm25:") :])  # refused here, before any work
    if kind not in KINDS:
        raise InputError(f"--field-kind {name}={kind}: kind must be multi or single")
    FieldSpec(name, kind, "text")  # validates the name
    return FieldRequest(name, source, kind)


def _reads_of(encoder: Any, info: dict[str, Any] | None) -> str:
    """What a field reads, from its encoder's ``reads``: text, image, or both together."""
    reads = getattr(encoder, "reads", None)
    if isinstance(reads, str) and reads in READS:
        return reads
    if reads is not None:
        parts = set(reads)
        return (
            "image+text" if parts == {"text", "image"} else ("text" if "text" in parts else "image")
        )
    if info is None:
        return "embedding"
    return "text" if info.get("family") == "text" else "image"


def load_field_encoder(name: str, source: str, kind: str, *, device: str | None = None) -> Any:
    """The encoder of field ``name`` from a hub id or folder (``kind="single"``: one vector per
    page, ``latemm.encoders.load_encoder``'s single kind). Any failure is an ``InputError``
    naming the field."""
    from latemm.encoders import load_encoder

    options: dict[str, Any] = {"device": device} if device else {}
    try:
        return load_encoder(source, kind="single" if kind == "single" else None, **options)
    except LatemmError as exc:
        raise InputError(f"field {name!r}: cannot use encoder {source!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - transformers/hub raise many types for a bad model
        raise InputError(
            f"field {name!r}: cannot load encoder {source!r} ({type(exc).__name__}: {exc}); give "
            "a local model folder or a hub id reachable from here"
        ) from exc


def encoder_from_spec(spec: FieldSpec, *, device: str | None = None) -> Any:
    """Rebuild a field's recorded encoder with its recorded options (None for bm25 and
    precomputed fields); a failure is an ``InputError`` naming the field."""
    if spec.encoder is None:
        return None
    from latemm.encoders import load_encoder

    try:
        options: dict[str, Any] = {"device": device} if device else {}
        return load_encoder(spec.encoder, **options)
    except LatemmError as exc:
        raise InputError(f"field {spec.name!r}: cannot rebuild its encoder: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - transformers/hub raise many types for a bad model
        raise InputError(
            f"field {spec.name!r}: cannot load its encoder {spec.encoder.get('name_or_path')!r} "
            f"({type(exc).__name__}: {exc})"
        ) from exc


# ------------------------------------------------------------------------------ building
@contextmanager
def locked(root: Path) -> Iterator[None]:
    """One writer of ``fields.json`` at a time: the collection's ``DIR/LOCK``, as every kind
    of index takes it (``index_store.housekeeping.acquire_lock``; each sub-index also locks
    itself)."""
    from index_store.housekeeping import acquire_lock, release_lock

    root.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(root)
    try:
        yield
    finally:
        release_lock(lock)


def _as_request(name: str, value: Any) -> FieldRequest:
    if isinstance(value, FieldRequest):
        return value
    if isinstance(value, (str, Path)):
        return parse_field(f"{name}={value}")
    pooled = bool((getattr(getattr(value, "info", None), "options", None) or {}).get("pooling"))
    return FieldRequest(name, value, "single" if pooled else "multi")


def _readable(table: pa.Table, reads: str, column: str) -> pa.Array:
    """Bool mask of the rows a field can read."""
    if column not in table.column_names:
        return pa.array([False] * table.num_rows)
    values = table.column(column)
    if reads == "text":
        stripped = pc.utf8_trim_whitespace(values)
        return pc.fill_null(pc.greater(pc.utf8_length(stripped), 0), False)
    return pc.is_valid(values)


def field_rows(
    corpus: Path, *, reads: str, column: str, id_column: str = "doc_id"
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The rows of ``corpus`` a field can read (non-empty ``column``), read in place from the
    id column and ``column`` alone: their sorted row numbers, and a reject record (doc_id, the
    corpus file, its row, the reason) for each row left out."""
    from latemm.data.io import open_dataset

    dataset = open_dataset(corpus)
    names = [n for n in (id_column, column) if n in dataset.schema.names]
    first_row = 0
    kept: list[np.ndarray] = []
    rejects: list[dict[str, Any]] = []
    reason = f"without {column}" if reads == "text" else f"without {reads} ({column} is null)"
    for batch in dataset.to_batches(columns=names, batch_size=1024):
        table = pa.Table.from_batches([batch])
        mask = _readable(table, reads, column)
        kept.append(first_row + np.flatnonzero(mask.to_numpy(zero_copy_only=False)))
        if id_column in table.column_names:
            ids = table.column(id_column).to_pylist()
            for i, ok in enumerate(mask.to_pylist()):
                if not ok and ids[i] is not None:
                    rejects.append(
                        {
                            "doc_id": str(ids[i]),
                            "source": str(corpus),
                            "row": first_row + i,
                            "reason": reason,
                        }
                    )
        first_row += table.num_rows
    if first_row == 0:
        raise InputError(f"{corpus} has no rows")
    return np.concatenate(kept).astype(np.int64), rejects


def _embedding_columns(fields: list[FieldRequest], cols: Any) -> set[str]:
    out = {cols.embedding}
    for req in fields:
        if isinstance(req.source, str) and req.source.startswith("embedding:"):
            out.add(req.source[len("embedding:") :])
    return out


def index_fields(
    corpus: str | Path,
    index_dir: str | Path,
    fields: Mapping[str, Any] | list[FieldRequest] | None = None,
    *,
    columns: Any = None,
    device: str | None = None,
    progress: bool = True,
    codebooks: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, int]:
    """Index a Parquet corpus into the named fields of ``index_dir`` (created if needed).

    Parameters
    ----------
    fields
        name -> source (``"bm25"``, ``"embedding:COLUMN"``, ``"single:ENCODER"``, a hub id or
        folder, or an ``Encoder``), or ``FieldRequest`` s. Only these fields are encoded; fields
        already in the index and not named are left as they are (so a field can be added
        later). None re-indexes every recorded field with its recorded encoder.
    codebooks
        field name -> the residual codebook a new vector field is coded with
        (``field_codebook``: the shards of a collection share one per field).
    options
        As for ``latemm.index.pipeline.index_corpus`` (dtype, faiss_factory, on_existing, ...).

    Returns
    -------
    name -> documents in that field after indexing.
    """
    from latemm.data.io import Columns

    root, source = Path(index_dir), Path(corpus)
    if (root / "manifest.json").is_file() and not is_fields_index(root):
        raise InputError(
            f"{root} is a single-field index (built with --encoder); named fields go into a new "
            "folder: `latemm index CORPUS --index NEW_DIR --field NAME=ENCODER ...`"
        )
    cols = columns or Columns()
    with locked(root):
        if is_fields_index(root):
            finish_delete(root)  # a delete cut short is finished before pages are added
        manifest = read_fields(root) if is_fields_index(root) else FieldsManifest(())
        if fields is None:
            if not manifest.fields:
                raise InputError(f"{root} has no fields yet; name them with --field NAME=ENCODER")
            requests = [recorded_request(spec) for spec in manifest.fields]
        elif isinstance(fields, Mapping):
            requests = [_as_request(n, v) for n, v in fields.items()]
        else:
            requests = list(fields)
        if not requests:
            raise InputError("no fields to index; name at least one with --field NAME=ENCODER")
        _check_requests(requests)
        from latemm.data.io import check_ids

        check_ids(source, columns=cols)  # null or duplicate ids: refused before any field is built
        planned = [_plan(req, manifest, cols, device) for req in requests]
        _check_bm25_text(source, planned, cols)
        drop_all = _embedding_columns(requests, cols)
        manifest = _store_pages(root, manifest, source, planned, cols, options)
        content = manifest.pages is None  # no page store (an index from before it): as then
        counts = {}
        for req, plan in zip(requests, planned, strict=True):
            codebook = (codebooks or {}).get(req.name)
            spec, count = _index_one(
                root, source, req, plan, cols, drop_all, progress, options, content, codebook
            )
            manifest = manifest.with_field(spec)
            write_json_atomic(root / FIELDS_FILE, manifest.to_dict())  # commits this field
            remove_stale_builds(root)
            counts[req.name] = count
    return counts


def _store_pages(
    root: Path,
    manifest: FieldsManifest,
    source: Path,
    planned: list[_Plan],
    cols: Any,
    options: dict[str, Any],
) -> FieldsManifest:
    """Write the corpus's pages to the index's page store and commit it in ``fields.json``
    before any field takes them (so a committed field's pages always have their content; a new
    index commits them with its first field).

    A new index gets a page store; an index with fields and no store (written before it
    existed) keeps its content in its fields, as then. Images are kept when ``keep_images``
    says so, or by default when a field reads images or precomputed vectors (as a field's own
    metadata kept them)."""
    if manifest.pages is None and manifest.fields:
        return manifest
    remove_stale_parts(root, manifest.pages)  # parts of a build that never committed
    keep = options.get("keep_images")
    images = bool(keep) if keep is not None else any(p.spec.reads != "text" for p in planned)
    upsert = options.get("on_existing") == "upsert"
    before = manifest.pages or StoreRecord()
    pages = add_pages(root, before, source, columns=cols, images=images, upsert=upsert)
    if manifest.pages is not None and pages is before:
        return manifest
    manifest = manifest.with_pages(pages)
    if manifest.fields:  # a new index commits its pages with its first field
        write_json_atomic(root / FIELDS_FILE, manifest.to_dict())
    return manifest


def compact_store(index_dir: str | Path) -> None:
    """Rewrite the page store without deleted and superseded pages and pages no field holds,
    and commit it (``latemm compact``); the caller holds the lock, no delete is unfinished."""
    from latemm.index import bm25

    root = Path(index_dir)
    manifest = read_fields(root)
    if manifest.pages is None:
        return
    held: set[str] = set()
    for spec in manifest.fields:
        if spec.kind == "bm25":
            held.update(bm25.read_docs(field_dir(root, spec)))
        else:
            index = vector_index(root, spec)
            held.update(index.doc_ids() if index is not None else ())
    pages = compact_pages(root, manifest.pages, held)
    if pages is not manifest.pages:
        write_json_atomic(root / FIELDS_FILE, manifest.with_pages(pages).to_dict())
        remove_stale_parts(root, pages)


def _check_bm25_text(source: Path, planned: list[_Plan], cols: Any) -> None:
    """A bm25 field over a corpus without the text column is refused before any work."""
    from latemm.data.io import open_dataset

    names = open_dataset(source).schema.names
    for plan in planned:
        if plan.spec.kind == "bm25" and cols.text not in names:
            raise InputError(
                f"{source}: bm25 field {plan.spec.name!r} reads the text column {cols.text!r}, "
                f"which the file does not have (columns: {', '.join(names)}); name it with "
                "--text-column, or leave the bm25 field out"
            )


def _check_requests(requests: list[FieldRequest]) -> None:
    """Field names given twice are refused before any work (each would overwrite the other)."""
    seen: set[str] = set()
    for req in requests:
        if req.name in seen:
            raise InputError(
                f"field {req.name!r} is given twice (--field {req.name}=...); name each field "
                "once per command"
            )
        seen.add(req.name)


def recorded_request(spec: FieldSpec) -> FieldRequest:
    """A recorded field as a request to add pages to it (its recorded encoder)."""
    if spec.kind == "bm25":
        return FieldRequest(spec.name, "bm25", "bm25")
    if spec.encoder is None:
        return FieldRequest(spec.name, f"embedding:{spec.options['embedding_column']}", spec.kind)
    return FieldRequest(spec.name, encoder_from_spec(spec), spec.kind)


@dataclass(frozen=True)
class _Plan:
    """A field to build, checked against what the index records before any field is built."""

    encoder: Any
    spec: FieldSpec
    recorded: FieldSpec | None


def _plan(req: FieldRequest, manifest: FieldsManifest, cols: Any, device: str | None) -> _Plan:
    """The encoder and spec of one requested field, refused (an ``InputError`` naming the
    field) if the index records it as another kind, encoder or column."""
    recorded = next((f for f in manifest.fields if f.name == req.name), None)
    encoder, spec = _spec_for(req, cols, device)
    if recorded is not None and (recorded.kind, recorded.reads) != (spec.kind, spec.reads):
        raise InputError(
            f"field {req.name!r} is a {recorded.kind} field reading {recorded.reads}; it cannot "
            f"take a {spec.kind} field reading {spec.reads} (name the new field differently)"
        )
    if recorded is not None and recorded.encoder and spec.encoder:
        reason = is_compatible(recorded.encoder, spec.encoder)
        if reason is not None:
            raise InputError(
                f"field {req.name!r} was built with encoder {recorded.encoder['name_or_path']!r}, "
                f"not {spec.encoder['name_or_path']!r} as configured ({reason}); add the new "
                "encoder as another field"
            )
    if recorded is not None and spec.reads == "embedding":
        was, now = recorded.options.get("embedding_column"), spec.options.get("embedding_column")
        if was != now:
            raise InputError(
                f"field {req.name!r} holds vectors from column {was!r}, not {now!r}: one field "
                f"cannot mix two columns' vectors; give --field {req.name}=embedding:{was} to add "
                f"pages, or add column {now!r} as another field"
            )
    return _Plan(encoder, spec, recorded)


def _index_one(
    root: Path,
    source: Path,
    req: FieldRequest,
    plan: _Plan,
    cols: Any,
    drop_all: set[str],
    progress: bool,
    options: dict[str, Any],
    content: bool,
    codebook: Any = None,
) -> tuple[FieldSpec, int]:
    """Build or extend one field from the rows of ``source`` it can read, read in place (no
    copy); returns its new spec and its document count. ``content=False``: a page store holds
    the pages' text and image, so a vector field keeps neither. ``codebook``: the residual
    codebook a new vector field is coded with."""
    encoder, spec, recorded = plan.encoder, plan.spec, plan.recorded
    base = index_path(root, "fields", req.name, what=f"field {req.name!r}'s folder")
    base.mkdir(parents=True, exist_ok=True)
    rows, rejects = _rows_of(source, spec, cols)
    if rejects and options.get("on_empty") == "error":
        first = rejects[0]
        raise InputError(
            f"{source}, row {first['row']}, doc_id {first['doc_id']!r}: field {req.name!r} "
            f"has nothing to read ({first['reason']}); drop the row or give it content, or "
            "leave out --on-empty error to skip such rows and record them in the index"
        )
    try:
        if spec.kind == "bm25":
            spec = _index_bm25(base, source, rows, spec, recorded, cols, options)
            if rejects:  # no Index to hold the records: the last build's count
                spec = replace(spec, options={**spec.options, "rejected": len(rejects)})
            return spec, int(spec.options["documents"])
        view = _view(rows, rejects, spec, drop_all, content)
        count = _index_vectors(base, source, view, spec, encoder, cols, progress, options, codebook)
        return spec, count
    except InputError as exc:  # a bad row names the user's file and row: add the field
        text = str(exc)
        if str(source) not in text or f"field {req.name!r}" in text:
            raise
        raise type(exc)(f"{text} (field {req.name!r})") from exc


def _rows_of(source: Path, spec: FieldSpec, cols: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The rows of ``source`` field ``spec`` can read, and the rejects records of the others."""
    column = {"text": cols.text, "embedding": spec.options.get("embedding_column")}.get(
        spec.reads, cols.image
    )
    return field_rows(source, reads=spec.reads, column=column, id_column=cols.id)


def _view(
    rows: np.ndarray,
    rejects: list[dict[str, Any]],
    spec: FieldSpec,
    drop_all: set[str],
    content: bool,
) -> Any:
    """The ``latemm.index.pipeline.CorpusView`` a vector field reads: its rows, without the other
    fields' embedding columns."""
    from latemm.index.pipeline import CorpusView

    own = spec.options.get("embedding_column")
    return CorpusView(rows, tuple(sorted(drop_all - {own})), tuple(rejects), content)


def field_codebook(
    corpus: str | Path,
    req: FieldRequest,
    requests: Sequence[FieldRequest],
    built: Sequence[Path],
    *,
    columns: Any = None,
    **options: Any,
) -> Any:
    """The residual codebook every shard codes its part of vector field ``req`` with, drawn
    from the whole ``corpus`` (``latemm.index.pipeline.shard_codebook``; ``built``: the field's
    folder in each shard, whose committed codebook a resumed build keeps). None for a BM25
    or single-vector field, or a field that is not residual. ``requests``: every field of the
    build (their embedding columns are not read)."""
    from latemm.data.io import Columns
    from latemm.index.pipeline import shard_codebook

    cols = columns or Columns()
    encoder, spec = _spec_for(req, cols, None)
    if spec.kind != "multi":
        return None
    source = Path(corpus)
    rows, rejects = _rows_of(source, spec, cols)
    if len(rows) == 0:
        return None
    view = _view(rows, rejects, spec, _embedding_columns(list(requests), cols), False)
    field_cols = replace(cols, embedding=spec.options.get("embedding_column", "\0none"))
    draw = {"encoder": encoder, "columns": field_cols, "view": view}
    return shard_codebook(built, source, options, **draw)[1]


def _spec_for(req: FieldRequest, cols: Any, device: str | None) -> tuple[Any, FieldSpec]:
    if req.kind == "bm25" or req.source == "bm25":
        options = {}
        if isinstance(req.source, str) and req.source.startswith("bm25:"):
            from latemm.index.bm25 import parse_tokenizer

            options["tokenizer"] = parse_tokenizer(req.source[len("bm25:") :]).to_dict()
        return None, FieldSpec(req.name, "bm25", "text", None, options)
    if isinstance(req.source, str) and req.source.startswith("embedding:"):
        column = req.source[len("embedding:") :]
        return None, FieldSpec(req.name, req.kind, "embedding", None, {"embedding_column": column})
    encoder = req.source
    if isinstance(encoder, str):
        encoder = load_field_encoder(req.name, encoder, req.kind, device=device)
    info = encoder.info.to_dict()
    return encoder, FieldSpec(req.name, req.kind, _reads_of(encoder, info), info)


def _index_vectors(
    base: Path,
    corpus: Path,
    view: Any,
    spec: FieldSpec,
    encoder: Any,
    cols: Any,
    progress: bool,
    options: dict[str, Any],
    codebook: Any = None,
) -> int:
    """Add the rows of ``view`` (a ``latemm.index.pipeline.CorpusView`` of ``corpus``) to a vector
    field's sub-index; returns its document count."""
    from latemm.index.pipeline import index_corpus

    if len(view.rows) == 0:
        return len(Index.open(base)) if (base / "manifest.json").is_file() else 0
    field_cols = replace(cols, embedding=spec.options.get("embedding_column", "\0none"))
    report = index_corpus(
        corpus,
        base,
        encoder=encoder,
        columns=field_cols,
        single_vector=spec.kind == "single",
        progress=progress,
        view=view,
        codebook=codebook,
        **options,
    )
    return report.documents


def _index_bm25(
    base: Path,
    corpus: Path,
    rows: np.ndarray,
    spec: FieldSpec,
    recorded: FieldSpec | None,
    cols: Any,
    options: dict[str, Any],
) -> FieldSpec:
    """Rebuild the BM25 field from its committed texts and the corpus's (a new build folder;
    ``fields.json`` then points at it and older builds are removed). A field keeps the
    tokenizer it was built with; asking for another one is an error naming the field."""
    from latemm.index import bm25

    texts: dict[str, str] = {}
    tokenizer = (
        bm25.Tokenizer.from_dict(spec.options["tokenizer"])
        if "tokenizer" in spec.options
        else bm25.Tokenizer()
    )
    if recorded is not None:
        texts = bm25.read_docs(field_dir(base.parent.parent, recorded))
        kept = bm25_tokenizer(recorded)
        if "tokenizer" in spec.options and tokenizer != kept:
            raise InputError(
                f"bm25 field {spec.name!r} was built with tokenizer {kept.to_dict()}, not "
                f"{tokenizer.to_dict()} as asked; give it as --field {spec.name}=bm25 to add "
                "pages, or build the new tokenizer as another field"
            )
        tokenizer = kept
    on_existing = options.get("on_existing", "skip")
    from latemm.data.io import open_dataset

    table = open_dataset(corpus).to_table(columns=[cols.id, cols.text]).take(pa.array(rows))
    for doc_id, text in zip(
        table.column(cols.id).to_pylist(), table.column(cols.text).to_pylist(), strict=True
    ):
        key = str(doc_id)
        if key in texts and on_existing == "error":
            raise InputError(f"{corpus}: doc_id {key!r} is already in BM25 field {spec.name!r}")
        if key not in texts or on_existing == "upsert":
            texts[key] = text
    try:
        return write_bm25_build(base, spec, recorded, texts, tokenizer)
    except InputError as exc:
        raise InputError(f"{corpus}: bm25 field {spec.name!r}: {exc}") from exc


def write_bm25_build(
    base: Path,
    spec: FieldSpec,
    recorded: FieldSpec | None,
    texts: dict[str, str],
    tokenizer: Any,
) -> FieldSpec:
    """A new build of bm25 field ``spec`` under ``base`` holding ``texts`` (doc_id -> text),
    next to the committed build of ``recorded`` (readers keep using it until the caller moves
    ``fields.json`` on); returns the spec that points at the new build. Builds left by an
    interrupted run (never committed) are removed first."""
    from latemm.index import bm25

    committed = recorded.options["dir"] if recorded is not None else None
    index_path(base.parent, base.name, what="a bm25 field's folder")  # never a link out
    for child in base.iterdir():
        if child.name != committed:
            _remove(child)
    generation = int(committed.lstrip("g")) if committed else 0
    name = f"g{generation + 1:06d}"
    files = bm25.build(base / name, list(texts), list(texts.values()), tokenizer=tokenizer)
    options = {
        "dir": name,
        "files": files,
        "documents": len(texts),
        "tokenizer": tokenizer.to_dict(),
    }
    if {bm25.TERM_FREQUENCIES, bm25.DOC_LENGTHS} <= set(files):
        options["format"] = bm25.BUILD_FORMAT  # its statistics: shards merge them at open
    return replace(spec, options=options)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_builds(index_dir: str | Path) -> None:
    """Remove bm25 builds and page store parts ``fields.json`` no longer points at (after a
    commit)."""
    root = Path(index_dir)
    manifest = read_fields(root)
    remove_stale_parts(root, manifest.pages)
    for spec in manifest.fields:
        if spec.kind != "bm25":
            continue
        for child in index_path(root, "fields", spec.name).iterdir():
            if child.name != spec.options["dir"]:
                _remove(child)


# ------------------------------------------------------------------ the delete journal
# A multi-field delete is recorded here before any field changes (latemm.index.field_maintenance
# writes it); readers honour it, writers finish it (``finish_delete``).
JOURNAL = "journal.json"


def vector_index(root: Path, spec: FieldSpec) -> Index | None:
    """A vector field's sub-index, or None while it holds no page (nothing committed yet)."""
    path = field_dir(root, spec)
    return Index.open(path, verify="none") if (path / "manifest.json").is_file() else None


def read_journal(index_dir: str | Path) -> list[str] | None:
    """The doc ids of an unfinished delete, or None when there is none."""
    path = index_path(index_dir, JOURNAL)  # a link is refused, never read
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        ids = payload["doc_ids"]
        if payload.get("op") != "delete" or not all(isinstance(d, str) for d in ids):
            raise ValueError("not a delete of string doc ids")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(
            f"{path} records an unfinished delete but cannot be read ({exc}); the fields may "
            "disagree about which pages exist: delete the journal and re-run `latemm delete` "
            "with the ids you meant"
        ) from exc
    return list(ids)


def finish_delete(root: Path) -> int:
    """Apply the journal's delete to every field, then remove the journal; the caller holds
    the index's lock (``latemm.index.fields.locked``). Returns how many ids it held (0 when there
    was no journal)."""
    ids = read_journal(root)
    if ids is None:
        return 0
    manifest = read_fields(root)
    for spec in manifest.fields:
        if spec.kind == "bm25":
            manifest = _delete_bm25(root, manifest, spec, set(ids))
            continue
        index = vector_index(root, spec)
        if index is not None and any(d in index for d in ids):
            with create(index.path, index.config) as writer:
                writer.delete(ids, missing_ok=True)
                writer.commit()
    if manifest.pages is not None:  # the pages' content goes last: fields never outlive it
        pages = delete_pages(root, manifest.pages, ids)
        if pages is not manifest.pages:
            manifest = manifest.with_pages(pages)
            write_json_atomic(root / FIELDS_FILE, manifest.to_dict())
    remove_stale_builds(root)
    os.unlink(root / JOURNAL)
    fsync_dir(root)
    return len(ids)


def _delete_bm25(
    root: Path, manifest: FieldsManifest, spec: FieldSpec, ids: set[str]
) -> FieldsManifest:
    """Rebuild a bm25 field without ``ids`` and commit it in ``fields.json`` (no change when
    it holds none of them)."""
    from latemm.index import bm25

    texts = bm25.read_docs(field_dir(root, spec))
    if not ids & texts.keys():
        return manifest
    kept = {d: t for d, t in texts.items() if d not in ids}
    base = index_path(root, "fields", spec.name, what=f"field {spec.name!r}'s folder")
    rebuilt = write_bm25_build(base, spec, spec, kept, bm25_tokenizer(spec))
    manifest = manifest.with_field(rebuilt)
    write_json_atomic(root / FIELDS_FILE, manifest.to_dict())
    return manifest
