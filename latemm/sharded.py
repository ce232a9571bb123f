"""Sharded indexes: N ordinary indexes under one directory, named by one atomic manifest.

Layout::

    DIR/shards.json             the commit point: format version, shard names, the shared
                                IndexConfig (with the encoder), documents per shard, generation
    DIR/shards/shard-0000/      an ordinary index (``index_store``)
    DIR/shards/shard-0001/      ...

A document lives in shard ``shard_of(doc_id, N)`` (the first 8 bytes of the BLAKE2b digest of
its UTF-8 id, mod N): re-runs and appends send every id to the same shard, so no id is ever in
two shards and ``on_existing`` (skip/upsert) keeps working per shard.

Searching scatters the query batch over the shards (in this process here; on Ray actors with
``latemm.distributed``) and merges the shards' top-k by final score, ties by doc_id, which is
how ``Retriever`` orders one index: the merge is exactly the top-k of one index over the same
corpus whenever each shard's own top-k is exact.

Imports ``index_store`` and ``latemm``'s pipeline and retriever; never Ray.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index_store import Index, IndexConfig, create
from index_store.errors import IndexCorruptError, IndexFormatError, InputError
from index_store.fsio import read_json_object, write_json_atomic
from latemm.io import Columns, open_dataset
from latemm.pipeline import IndexReport, index_corpus
from latemm.retriever import SearchResult

SHARDS_MANIFEST = "shards.json"
SHARDS_FORMAT_VERSION = 1
HASH = "blake2b-64-mod-n"


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
    """True when ``path`` holds a sharded index (a ``shards.json``)."""
    return (Path(path) / SHARDS_MANIFEST).is_file()


def read_manifest(root: str | Path) -> ShardManifest:
    """Read ``DIR/shards.json``; errors name the file and what is wrong with it."""
    path = Path(root) / SHARDS_MANIFEST
    if not path.is_file():
        raise IndexCorruptError(
            f"{root} is not a sharded latemm index ({SHARDS_MANIFEST} is missing); build one with "
            "`latemm index CORPUS --index DIR --shards N`"
        )
    payload = read_json_object(path)
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

    An existing sharded index keeps its N (a different ``--shards`` is an error: ids would
    move between shards); an ordinary index in the folder is an error too."""
    path = Path(root)
    if (path / "manifest.json").is_file():
        raise InputError(
            f"{path} holds an ordinary (unsharded) index; index into a new folder to shard, or "
            "leave out --shards/--ray to add to it"
        )
    existing = read_manifest(path) if is_sharded(path) else None
    if existing is not None:
        if num_shards is not None and num_shards != existing.num_shards:
            raise InputError(
                f"{path} has {existing.num_shards} shards, not {num_shards}; doc ids are routed "
                f"by hash mod N, so N is fixed: pass --shards {existing.num_shards} or a new folder"
            )
        return existing.num_shards, existing
    if num_shards is None or num_shards < 1:
        raise InputError(f"--shards must be a positive number of shards, got {num_shards}")
    return num_shards, None


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
        else:
            create(shard_dir, config).close()
    documents = tuple(len(Index.open(d, verify="none")) for d in dirs)
    generation = existing.generation + 1 if existing is not None else 1
    manifest = ShardManifest(num_shards, config, documents, generation)
    write_manifest(root, manifest)
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
    n, existing = prepare(root, num_shards)
    if existing is not None and encoder is not None and existing.config.encoder:
        check_encoder(existing.config, encoder.info.to_dict(), root)
    staging = root / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    added = skipped = rejected = 0
    try:
        parts = partition_corpus(corpus, staging, n, columns=columns)
        for shard, part in enumerate(parts):
            if part is None:
                continue
            report = index_corpus(
                part,
                root / "shards" / shard_name(shard),
                encoder=encoder,
                columns=columns,
                progress=progress,
                **options,
            )
            added, skipped = added + report.added, skipped + report.skipped
            rejected += report.rejected
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info = encoder.info.to_dict() if encoder is not None else None
    manifest = commit_shards(root, n, encoder_info=info, existing=existing)
    return IndexReport(added, skipped, sum(manifest.documents), manifest.generation, rejected)


def check_encoder(config: IndexConfig, info: dict[str, Any], where: str | Path) -> None:
    """The query/corpus encoder must be the one the sharded index recorded."""
    recorded = config.encoder
    if recorded is None:
        return
    if info["name_or_path"] != recorded["name_or_path"] or info["dim"] != recorded["dim"]:
        raise InputError(
            f"the index {where} was built with encoder {recorded['name_or_path']!r} (dim "
            f"{recorded['dim']}); these vectors would come from {info['name_or_path']!r} (dim "
            f"{info['dim']}). Use the index's encoder"
        )


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

    manifest = read_manifest(root)
    problems = []
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
        if found != manifest.documents[shard]:
            problems.append(
                f"shard {name}: holds {found} documents, {SHARDS_MANIFEST} records "
                f"{manifest.documents[shard]} (an ingest was interrupted before its commit; "
                "re-run it to finish)"
            )
    return problems


# ------------------------------------------------------------------------------ searching
def merge_results(results: Sequence[SearchResult], k: int) -> SearchResult:
    """Merge per-shard results of the same queries into one top-k per query: best final score
    first, ties by doc_id, exactly as ``Retriever`` orders one index."""
    first = results[0]
    n_queries = len(first.query_ids)
    ids = np.concatenate([r.doc_ids for r in results], axis=1)  # (Q, shards * k) object
    final = np.concatenate([r.scores for r in results], axis=1)
    fde = np.concatenate([r.fde_scores for r in results], axis=1)
    exact = np.concatenate([r.maxsim_scores for r in results], axis=1)
    out_ids = np.full((n_queries, k), None, dtype=object)
    out = [np.full((n_queries, k), np.nan, dtype=np.float32) for _ in range(3)]
    for q in range(n_queries):
        valid = np.flatnonzero(ids[q] != None)  # noqa: E711 - elementwise on an object array
        if valid.size == 0:
            continue
        doc_ids = ids[q, valid]
        order = valid[np.lexsort((doc_ids.astype(str), -final[q, valid]))][:k]
        out_ids[q, : order.size] = ids[q, order]
        for target, source in zip(out, (final, fde, exact), strict=True):
            target[q, : order.size] = source[q, order]
    return SearchResult(list(first.query_ids), out_ids, out[0], out[1], out[2])


class ShardedRetriever:
    """Search a sharded index: encode the queries once, search every shard with the same
    k / candidates / where, merge the top-k exactly (``merge_results``).

    Parameters
    ----------
    index
        The sharded index directory.
    encoder
        Encodes queries (``search``); must match the encoder ``shards.json`` records.
    ray
        None searches the shards in this process (each shard memory-mapped); ``"local"`` or a
        cluster address serves each shard from a Ray actor (``latemm.distributed``).
    **options
        ``Retriever`` options for every shard (``device``, ``nprobe``, ``ef_search``).
    """

    def __init__(
        self,
        index: str | Path,
        *,
        encoder: Any = None,
        ray: str | None = None,
        **options: Any,
    ) -> None:
        self.path = Path(index)
        self.manifest = read_manifest(self.path)
        self.config = self.manifest.config
        self.encoder = encoder
        if encoder is not None:
            check_encoder(self.config, encoder.info.to_dict(), self.path)
        self._search: Callable[..., list[SearchResult]]
        if ray is None:
            from latemm.retriever import Retriever

            self._retrievers = [
                Retriever(open_shard(self.path, s), **options)
                for s in range(self.manifest.num_shards)
            ]
            self._search = self._search_local
        else:
            from latemm.distributed import ShardActors

            self._actors = ShardActors(self.path, self.manifest, address=ray, **options)
            self._search = self._actors.search_embeddings

    @property
    def generation(self) -> int:
        return self.manifest.generation

    def indexes(self) -> list[Index]:
        """Every shard, opened read-only (to check a ``where`` filter before searching)."""
        return [open_shard(self.path, s) for s in range(self.manifest.num_shards)]

    def __len__(self) -> int:
        return sum(self.manifest.documents)

    def _search_local(self, *args: Any, **kwargs: Any) -> list[SearchResult]:
        return [r.search_embeddings(*args, **kwargs) for r in self._retrievers]

    def search(
        self,
        queries: Sequence[Any],
        *,
        k: int = 10,
        candidates: int | None = None,
        where: Any = None,  # latemm.retriever.Where: one condition, or one per query
        query_ids: Sequence[str] | None = None,
    ) -> SearchResult:
        """Encode queries (text or ``Page``) once, then ``search_embeddings``."""
        if self.encoder is None:
            raise InputError(
                "this ShardedRetriever has no encoder; pass encoder= or call search_embeddings "
                "with precomputed vectors"
            )
        encoded = self.encoder.encode_queries(list(queries))
        return self.search_embeddings(
            encoded.vectors,
            encoded.offsets,
            k=k,
            candidates=candidates,
            where=where,
            query_ids=query_ids,
        )

    def search_embeddings(
        self,
        query_vectors: Any,
        query_offsets: Any = None,
        *,
        k: int = 10,
        candidates: int | None = None,
        where: Any = None,  # latemm.retriever.Where: one condition, or one per query
        query_ids: Sequence[str] | None = None,
        rescore: bool = True,
    ) -> SearchResult:
        """As ``Retriever.search_embeddings``, over every shard, merged exactly."""
        from fde import FDEInputError, as_flat

        dim = self.config.dim
        try:
            flat, offsets = as_flat(query_vectors, dim, offsets=query_offsets, kind="query")
        except FDEInputError as exc:
            raise InputError(f"{exc} (the index stores {dim}-dimensional vectors)") from exc
        results = self._search(
            flat,
            offsets,
            k=k,
            candidates=candidates,
            where=where,
            query_ids=query_ids,
            rescore=rescore,
        )
        return merge_results(results, k)

    def close(self) -> None:
        """Release the shard actors (nothing to do in-process)."""
        if hasattr(self, "_actors"):
            self._actors.close()


def open_retriever(
    index_dir: str | Path,
    *,
    encoder: Any = None,
    reranker: Any = None,
    ray: str | None = None,
    **options: Any,
) -> Any:
    """``Retriever`` for an ordinary index, ``ShardedRetriever`` for a sharded one (on Ray
    actors with ``ray``)."""
    from latemm.retriever import Retriever

    if not is_sharded(index_dir):
        if ray is not None:
            raise InputError(
                f"--ray serves a sharded index; {index_dir} is an ordinary one. Build a sharded "
                "index with `latemm index CORPUS --index DIR --shards N`, or leave out --ray"
            )
        return Retriever(index_dir, encoder=encoder, reranker=reranker, **options)
    if reranker is not None:
        raise InputError(
            f"reranking is not available on a sharded index ({index_dir}) yet; search without "
            "--rerank, or rerank the run's top pages from an ordinary index"
        )
    shard_options = {k: v for k, v in options.items() if not k.startswith("rerank")}
    return ShardedRetriever(index_dir, encoder=encoder, ray=ray, **shard_options)
