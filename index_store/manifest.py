"""The manifest, typed: ``Manifest``, ``SegmentEntry``, ``FileEntry``, ``RejectsEntry``.

``manifest.json`` is the commit point of an index. It is read into these frozen records and
validated field by field, so a malformed manifest is one ``IndexCorruptError`` (or
``IndexFormatError`` for another format version) naming the file and the field, and every path
it names is a plain file name inside the index directory. Commits build a new ``Manifest`` with
``dataclasses.replace`` and write it with ``Manifest.write``; nothing edits a raw dict.

On disk (format version 1)::

    {"format_version": 1, "generation": G, "config": IndexConfig.to_dict(),
     "segments": [{"name": "seg-g000001", "num_docs": n, "num_vectors": N, "num_deleted": k,
                   "files": {"vectors.npy": {"size": B, "sha256": H}, ...},
                   "deleted": null | {"file": "deleted-g000002.npy", "size": B, "sha256": H}}],
     "rejects": null | {"file": "rejects-g000002.parquet", "size": B, "sha256": H, "count": r},
     "counts": {"documents": D, "vectors": V, "segments": S}, "created": T, "updated": T}

``rejects`` is optional (absent in indexes written before it existed); ``counts`` is derived
from the segments and rewritten at each commit.

Format version 2 adds the global first stage (``index_store.first_stage``): an optional
``"fde_codebook": {"file": "fde-pq-g000002.faiss", "size": B, "sha256": H}`` at the top level,
and segments whose files hold ``fde-codes.npy`` (codes under that codebook) instead of
``fde.faiss``. An index is written as version 2 from the commit that adds its codebook, as
version 1 otherwise, so that indexes without one stay readable by older latemm.

Format version 5 adds one residual codebook per index (``IndexConfig.residual_codebook ==
"index"``, which only version 5 has): an optional ``"vectors_codebook": {"file":
"vectors-codebook-g000006.npy", "size": B, "sha256": H, "codec": codecs.residual_training(...)}``
at the top level; residual segments written after it hold no ``codebook.npy`` and are decoded
with it, the float16 segments written before it are rewritten under it. An older latemm refuses
such an index by its version instead of misreading it; per-segment indexes stay as they were.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from index_store.codecs import RESIDUAL_TRAINING_COUNTS, is_residual, is_trained, storage_dtype
from index_store.config import IndexConfig
from index_store.errors import IndexCorruptError, IndexFormatError, InputError
from index_store.fsio import read_json_object, write_json_atomic

# Written unless the index has a codebook (then 2), page magnitudes (3) or a refine copy (4).
FORMAT_VERSION = 1
CODEBOOK_FORMAT_VERSION = 2
PAGE_MAX_FORMAT_VERSION = 3  # a segment stores its float16 documents' magnitudes
PAGE_MAX_FILE = "page-max.npy"
REFINE_FORMAT_VERSION = 4  # segments store a refine copy of compact codes (IndexConfig.refine)
REFINE_FILE = "refine-vectors.npy"
REFINE_SCALES_FILE = "refine-scales.npy"
VECTORS_CODEBOOK_FORMAT_VERSION = 5  # one residual codebook for the index's segments
READABLE_VERSIONS = (1, 2, 3, 4, 5)
MANIFEST = "manifest.json"
SEGMENT_PATTERN = re.compile(r"seg-g\d{6,}")
SEGMENT_TMP_PATTERN = re.compile(r"\.tmp-seg-g\d{6,}-\d+")
DELETED_PATTERN = re.compile(r"deleted-g\d{6,}\.npy")
REJECTS_PATTERN = re.compile(r"rejects-g\d{6,}\.parquet")
CODEBOOK_PATTERN = re.compile(r"fde-pq-g\d{6,}\.faiss")
VECTORS_CODEBOOK_PATTERN = re.compile(r"vectors-codebook-g\d{6,}\.npy")
SEGMENT_FILES = (
    "codebook.npy",
    "fde.faiss",
    "fde-codes.npy",
    "meta.parquet",
    "offsets.npy",
    PAGE_MAX_FILE,
    REFINE_FILE,
    REFINE_SCALES_FILE,
    "scales.npy",
    "vectors.npy",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class _Reader:
    """Typed access to a JSON object, raising ``IndexCorruptError`` naming file and field."""

    def __init__(self, source: Path, where: str, payload: Any) -> None:
        self.source, self.where = source, where
        if not isinstance(payload, dict):
            raise self.error(f"expected a JSON object, got {type(payload).__name__}")
        self.payload = payload

    def error(self, why: str, key: str | None = None) -> IndexCorruptError:
        field = f"{self.where}.{key}" if self.where and key else (key or self.where or "top level")
        return IndexCorruptError(
            f"{self.source}: field {field!r}: {why}. The manifest is damaged: restore it from a "
            "backup or rebuild the index"
        )

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if key not in self.payload:
            if optional:
                return None
            raise self.error("missing", key)
        value = self.payload[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.error(f"expected {names}, got {value!r}"[:300], key)
        return value

    def count(self, key: str) -> int:
        value = self.get(key, int)
        if value < 0:
            raise self.error(f"expected an int >= 0, got {value}", key)
        return int(value)

    def name(self, key: str, pattern: re.Pattern[str], value: Any = None) -> str:
        """A plain file name matching ``pattern``: no separators, no ``..``, inside the index."""
        value = self.get(key, str) if value is None else value
        if not pattern.fullmatch(value):
            raise self.error(
                f"{value!r} is not a file name this index writes (expected {pattern.pattern}); "
                "paths outside the index directory are refused",
                key,
            )
        return str(value)

    def sub(self, key: str, value: Any) -> _Reader:
        where = f"{self.where}.{key}" if self.where else key
        return _Reader(self.source, where, value)


@dataclass(frozen=True)
class FileEntry:
    """A file of the index: its name (relative to its directory), size and sha256."""

    file: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_reader(cls, reader: _Reader, name: str) -> FileEntry:
        digest = reader.get("sha256", str)
        if not _SHA256.fullmatch(digest):
            raise reader.error(f"expected 64 lowercase hex digits, got {digest!r}", "sha256")
        return cls(file=name, size=reader.count("size"), sha256=digest)


@dataclass(frozen=True)
class SegmentEntry:
    """One immutable segment: ``segments/<name>/`` with ``files``, and its deletion bitmap."""

    name: str
    num_docs: int
    num_vectors: int
    files: tuple[FileEntry, ...]
    deleted: FileEntry | None = None
    num_deleted: int = 0
    # What the vectors are stored as when not the config's dtype: float16 for a segment too
    # small to train the config's codec (``codecs.storage_dtype``). None: the config's dtype.
    dtype: str | None = None
    # How a residual segment's codebook was trained (``codecs.residual_training``): its
    # centroid count, the vectors sampled, k-means and bucket iterations. None: written before
    # it was recorded, or a codec without one.
    codec: dict[str, Any] | None = None

    def storage_dtype(self, config_dtype: str) -> str:
        return self.dtype or config_dtype

    @property
    def live_docs(self) -> int:
        return self.num_docs - self.num_deleted

    def all_files(self) -> tuple[FileEntry, ...]:
        return self.files + ((self.deleted,) if self.deleted else ())

    @property
    def coded(self) -> bool:
        """Whether the segment's first stage is codes under the index's codebook."""
        return self.file("fde-codes.npy") is not None

    def file(self, name: str) -> FileEntry | None:
        return next((f for f in self.files if f.file == name), None)

    def with_deleted(self, deleted: FileEntry, num_deleted: int) -> SegmentEntry:
        return replace(self, deleted=deleted, num_deleted=num_deleted)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "num_docs": self.num_docs,
            "num_vectors": self.num_vectors,
            "files": {f.file: {"size": f.size, "sha256": f.sha256} for f in self.files},
            "deleted": self.deleted.to_dict() if self.deleted else None,
            "num_deleted": self.num_deleted,
        }
        if self.dtype is not None:  # absent otherwise: segments stay as they were
            out["dtype"] = self.dtype
        if self.codec is not None:  # readers before it ignore the key
            out["codec"] = dict(self.codec)
        return out

    @classmethod
    def from_reader(cls, r: _Reader, *, dtype: str, refine: str | None = None) -> SegmentEntry:
        name = r.name("name", SEGMENT_PATTERN)
        num_docs, num_deleted = r.count("num_docs"), r.count("num_deleted")
        if num_deleted > num_docs:
            raise r.error(f"{num_deleted} deleted of {num_docs} documents", "num_deleted")
        files_reader = r.sub("files", r.get("files", dict))
        files = []
        for fname, info in files_reader.payload.items():
            if fname not in SEGMENT_FILES:
                raise files_reader.error(
                    f"{fname!r} is not a segment file (expected {', '.join(SEGMENT_FILES)}); "
                    "paths outside the index directory are refused"
                )
            files.append(FileEntry.from_reader(files_reader.sub(fname, info), fname))
        stored = r.get("dtype", str, optional=True)
        if stored is not None and stored != storage_dtype(dtype, 0):
            raise r.error(
                f"{stored!r} is not what a {dtype} index stores in a segment too small to "
                "train its codec (only float16 is)",
                "dtype",
            )
        kind = stored or dtype
        have = {f.file for f in files}
        # The first stage: a faiss index of its own, or codes under the index's codebook.
        first = "fde-codes.npy" if "fde-codes.npy" in have else "fde.faiss"
        needed = {first, "meta.parquet", "offsets.npy", "vectors.npy"}
        needed |= {"scales.npy"} if kind == "int8" or is_residual(kind) else set()
        # A residual segment written under the index's codebook has none of its own
        # (``Manifest.vectors_codebook``; checked there).
        own = not is_residual(kind) or "codebook.npy" in have
        needed |= {"codebook.npy"} if is_trained(kind) and own else set()
        # A float16 segment stores its page magnitudes since format version 3.
        needed |= {PAGE_MAX_FILE} if kind == "float16" and PAGE_MAX_FILE in have else set()
        # Compact codes carry the index's refine copy (a float16 segment needs none).
        if refine is not None and kind != "float16":
            needed |= {REFINE_FILE} | ({REFINE_SCALES_FILE} if refine == "int8" else set())
        if have != needed:
            raise files_reader.error(
                f"lists {sorted(have)}; a {kind} segment has exactly {sorted(needed)}"
            )
        deleted = None
        raw = r.get("deleted", dict, optional=True)
        if raw is not None:
            d = r.sub("deleted", raw)
            deleted = FileEntry.from_reader(d, d.name("file", DELETED_PATTERN))
        elif num_deleted:
            raise r.error(f"{num_deleted} documents deleted but no bitmap", "deleted")
        num_vectors = r.count("num_vectors")
        codec = r.get("codec", dict, optional=True)
        if codec is not None:
            if not is_residual(kind) or "codebook.npy" not in have:
                raise r.error(f"a {kind} segment without codebook.npy records no training", "codec")
            codec = _check_codec(r, codec)
        return cls(name, num_docs, num_vectors, tuple(files), deleted, num_deleted, stored, codec)


def vectors_codebook_name(generation: int) -> str:
    """The file name of a residual index codebook first committed at ``generation``."""
    return f"vectors-codebook-g{generation:06d}.npy"


def _check_codec(r: _Reader, codec: Any) -> dict[str, Any]:
    """A residual codebook's training record (``codecs.residual_training``), checked."""
    c = r.sub("codec", codec)
    for key in RESIDUAL_TRAINING_COUNTS:
        c.count(key)
    if c.count("centroids") < 1:
        raise c.error("expected at least 1 centroid", "centroids")
    c.get("buckets", str)
    return dict(codec)


@dataclass(frozen=True)
class VectorsCodebookEntry:
    """The index's residual codebook (``vectors-codebook-g<gen>.npy`` at the index root, the
    layout of ``codecs.train_residual``) and how it was trained (``codecs.residual_training``)."""

    file: FileEntry
    codec: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.file.to_dict(), "codec": dict(self.codec)}

    @classmethod
    def from_reader(cls, r: _Reader) -> VectorsCodebookEntry:
        entry = FileEntry.from_reader(r, r.name("file", VECTORS_CODEBOOK_PATTERN))
        return cls(entry, _check_codec(r, r.get("codec", dict)))


@dataclass(frozen=True)
class RejectsEntry:
    """The rejects file at the index root (``index_store.rejects``) and its record count."""

    file: FileEntry
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.file.to_dict(), "count": self.count}

    @classmethod
    def from_reader(cls, r: _Reader) -> RejectsEntry:
        return cls(FileEntry.from_reader(r, r.name("file", REJECTS_PATTERN)), r.count("count"))


def _codebook(
    r: _Reader, config: IndexConfig, segments: tuple[SegmentEntry, ...]
) -> FileEntry | None:
    """The ``fde_codebook`` entry, consistent with the config and the segments."""
    raw = r.get("fde_codebook", dict, optional=True)
    codebook = None
    if raw is not None:
        sub = r.sub("fde_codebook", raw)
        codebook = FileEntry.from_reader(sub, sub.name("file", CODEBOOK_PATTERN))
        if not config.faiss_factory.endswith("x4fs"):
            raise r.error(
                f"a codebook with faiss_factory {config.faiss_factory!r}, which has none",
                "fde_codebook",
            )
    coded = [e.name for e in segments if e.coded]
    if coded and codebook is None:
        raise r.error(
            f"segment {coded[0]} holds fde-codes.npy but there is no codebook", "fde_codebook"
        )
    return codebook


def _vectors_codebook(
    r: _Reader, config: IndexConfig, segments: tuple[SegmentEntry, ...], version: int
) -> VectorsCodebookEntry | None:
    """The ``vectors_codebook`` entry, consistent with the version, the config and segments."""
    raw = r.get("vectors_codebook", dict, optional=True)
    entry = None
    if raw is not None:
        if version < VECTORS_CODEBOOK_FORMAT_VERSION:
            raise r.error(f"format version {version} has no vectors_codebook", "vectors_codebook")
        if config.residual_codebook != "index":
            raise r.error(
                f"an index codebook in a {config.dtype} index with residual_codebook "
                f"{config.residual_codebook!r}, which has none",
                "vectors_codebook",
            )
        entry = VectorsCodebookEntry.from_reader(r.sub("vectors_codebook", raw))
    shared = [
        e.name
        for e in segments
        if is_residual(e.storage_dtype(config.dtype)) and e.file("codebook.npy") is None
    ]
    if shared and entry is None:
        raise r.error(
            f"segment {shared[0]} holds residual codes without codebook.npy but there is no "
            "index codebook",
            "vectors_codebook",
        )
    return entry


@dataclass(frozen=True)
class Manifest:
    """A committed state of an index (``manifest.json``)."""

    config: IndexConfig
    generation: int = 0
    segments: tuple[SegmentEntry, ...] = ()
    rejects: RejectsEntry | None = None
    codebook: FileEntry | None = None  # the global first stage's (index_store.first_stage)
    vectors_codebook: VectorsCodebookEntry | None = None  # a residual index's (codecs)
    created: str = ""
    updated: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def counts(self) -> dict[str, int]:
        """Live documents, stored vectors (deleted ones included until compaction), segments."""
        return {
            "documents": sum(e.live_docs for e in self.segments),
            "vectors": sum(e.num_vectors for e in self.segments),
            "segments": len(self.segments),
        }

    def files(self) -> list[tuple[str, FileEntry]]:
        """(directory relative to the index root, entry) of every file the manifest lists."""
        out = [(f"segments/{e.name}", f) for e in self.segments for f in e.all_files()]
        out += [("", self.codebook)] if self.codebook else []
        out += [("", self.vectors_codebook.file)] if self.vectors_codebook else []
        return out + ([("", self.rejects.file)] if self.rejects else [])

    @property
    def written_version(self) -> int:
        """The format version this manifest is written as: at least the one it was read as,
        2 with a codebook, 3 once a segment stores page magnitudes, 4 with a refine copy
        (readers before them would not know the files, and say so by the version instead)."""
        needs = CODEBOOK_FORMAT_VERSION if self.codebook is not None else FORMAT_VERSION
        if any(e.file(PAGE_MAX_FILE) for e in self.segments):
            needs = PAGE_MAX_FORMAT_VERSION
        if self.config.refine is not None:
            needs = REFINE_FORMAT_VERSION
        if self.vectors_codebook is not None or self.config.residual_codebook == "index":
            needs = VECTORS_CODEBOOK_FORMAT_VERSION
        return max(self.format_version, needs)

    def to_dict(self) -> dict[str, Any]:
        payload = {
            "format_version": self.written_version,
            "generation": self.generation,
            "config": self.config.to_dict(),
            "segments": [e.to_dict() for e in self.segments],
            "rejects": self.rejects.to_dict() if self.rejects else None,
            "counts": self.counts,
            "created": self.created,
        }
        if self.updated is not None:
            payload["updated"] = self.updated
        if self.codebook is not None:  # absent otherwise: version 1 manifests stay as they were
            payload["fde_codebook"] = self.codebook.to_dict()
        if self.vectors_codebook is not None:  # absent otherwise (version 5 only with it)
            payload["vectors_codebook"] = self.vectors_codebook.to_dict()
        return payload

    @classmethod
    def from_dict(cls, payload: Any, source: Path) -> Manifest:
        """Validate a parsed ``manifest.json`` (``source`` names it in errors)."""
        r = _Reader(source, "", payload)
        version = payload.get("format_version")
        if version not in READABLE_VERSIONS:
            raise IndexFormatError(
                f"{source} has format_version {version!r}; this latemm reads version(s) "
                f"{', '.join(map(str, READABLE_VERSIONS))}. Use the latemm that wrote it, or "
                "rebuild the index"
            )
        try:
            config = IndexConfig.from_dict(r.get("config", dict))
        except InputError as exc:
            raise r.error(str(exc), "config") from exc
        segments = r.get("segments", list)
        entries = tuple(
            SegmentEntry.from_reader(
                r.sub(f"segments[{i}]", s), dtype=config.dtype, refine=config.refine
            )
            for i, s in enumerate(segments)
        )
        if len({e.name for e in entries}) != len(entries):
            raise r.error("a segment is listed twice", "segments")
        if version < PAGE_MAX_FORMAT_VERSION and any(e.file(PAGE_MAX_FILE) for e in entries):
            raise r.error(
                f"a segment lists {PAGE_MAX_FILE}, which format version {version} does not have",
                "segments",
            )
        if version < VECTORS_CODEBOOK_FORMAT_VERSION and config.residual_codebook != "segment":
            raise r.error(
                f"the config sets residual_codebook, which format version {version} does not have",
                "config",
            )
        if version < REFINE_FORMAT_VERSION and config.refine is not None:
            raise r.error(
                f"the config sets refine, which format version {version} does not have", "config"
            )
        raw_rejects = r.get("rejects", dict, optional=True)
        r.get("counts", dict, optional=True)
        codebook = _codebook(r, config, entries)
        vectors_codebook = _vectors_codebook(r, config, entries, int(version))
        return cls(
            config=config,
            generation=r.count("generation"),
            segments=entries,
            rejects=RejectsEntry.from_reader(r.sub("rejects", raw_rejects))
            if raw_rejects
            else None,
            codebook=codebook,
            vectors_codebook=vectors_codebook,
            created=r.get("created", str, optional=True) or "",
            updated=r.get("updated", str, optional=True),
            format_version=int(version),
        )

    def with_codebook(self, codebook: FileEntry | None) -> Manifest:
        """This manifest with ``codebook`` (written as version 2 at least: ``written_version``)."""
        return self if codebook is None else replace(self, codebook=codebook)

    def with_vectors_codebook(self, entry: VectorsCodebookEntry | None) -> Manifest:
        """This manifest with the residual codebook ``entry`` (written as version 5)."""
        return self if entry is None else replace(self, vectors_codebook=entry)

    @classmethod
    def read(cls, root: Path) -> Manifest:
        """The manifest of the index at ``root``; errors say what ``root`` is instead."""
        path = root / MANIFEST
        if root.exists() and not root.is_dir():
            raise InputError(
                f"{root} is a file, not an index directory; --index takes the directory "
                "`latemm index` created"
            )
        if not path.is_file():
            raise IndexCorruptError(
                f"{root} is not a latemm index ({MANIFEST} is missing); create one with "
                "`latemm index CORPUS.parquet --index DIR`"
            )
        return cls.from_dict(read_json_object(path), path)

    def write(self, root: Path) -> None:
        """The commit: replace ``root/manifest.json`` atomically."""
        write_json_atomic(root / MANIFEST, self.to_dict())
