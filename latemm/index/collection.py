"""An index folder of any kind as one collection: the one place that tells the kinds apart.

latemm writes four kinds of index folder: a plain index (``manifest.json``: one field, the
encoder's), a multi-field index (``fields.json``, ``latemm.index.fields``), a sharded index
(``shards.json`` over plain shards, ``latemm.index.sharded``) and a sharded multi-field collection
(``shards.json`` over fields shards, ``latemm.index.field_shards``). ``open_collection`` reads which
one a folder holds, once, and returns an object with the same verbs for each: ``info``,
``delete``, ``compact``, ``verify``, ``recorded_encoder``, ``page_lookup`` and
``check_searchable``, and says whether it is ``sharded`` and has ``named_fields``. The CLI, the
Python API, the searchers (``latemm.retrieval.field_search``) and ``latemm show`` call these
and never test the kind themselves.

Imports ``index_store`` and ``latemm.index.{fields, field_maintenance, sharded, field_shards,
pagestore, bm25}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# doc_id -> the page's stored content and metadata (text, image, source, page...), or None when
# the collection does not hold the page.
Lookup = Callable[[str], dict[str, Any] | None]


class Collection:
    """The verbs every kind of index answers. ``path`` is the folder; ``sharded`` whether it is
    split into shards; ``named_fields`` whether its fields are named (``--field``) rather than
    the one field of an encoder (searched as field ``default``)."""

    kind = "plain"
    sharded = False
    named_fields = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def check_searchable(self, create: str) -> None:
        """Refuse, before any model is loaded, a folder a search cannot read: one holding no
        index (``create`` says how to make one) or an unfinished first build (how to finish
        it)."""
        from index_store.errors import InputError

        if not (self.path / "manifest.json").is_file():
            raise InputError(
                f"{self.path} is not a latemm index (no manifest.json, fields.json or "
                f"shards.json); create one with {create}"
            )

    def info(self) -> dict[str, Any]:
        """What ``latemm info`` prints: the collection's summary as JSON-ready values."""
        from index_store import Index

        index = Index.open(self.path)
        stats = per_page(index.stats(), index)
        if stats.get("rejected"):  # the rows an ingest skipped: row, doc_id, source file, reason
            stats["rejects"] = index.rejects().to_pylist()
        return stats

    def delete(self, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
        """Delete pages by id from every field (and shard); returns how many were deleted. An
        id the collection does not hold is an error unless ``missing_ok``."""
        from index_store import Index, create

        with create(self.path, Index.open(self.path, verify="none").config) as writer:
            found = writer.delete(list(doc_ids), missing_ok=missing_ok)
            writer.commit()
        return int(found)

    def compact(self) -> dict[str, Any]:
        """Rewrite the collection without its deleted pages; returns its state after it:
        ``{"generation": G}``, or for an unsharded multi-field index each field's."""
        from index_store import Index, create

        with create(self.path, Index.open(self.path, verify="none").config) as writer:
            return {"generation": writer.compact()}

    def verify(self) -> list[str]:
        """Every problem found (missing or damaged files, bad checksums), each naming its
        file; empty when the collection is intact."""
        from index_store import verify

        return list(verify(self.path))

    def recorded_encoder(self) -> dict[str, Any] | None:
        """The encoder the one field of a plain or sharded index was built with (None for
        precomputed vectors and for named fields, which record one per field)."""
        from index_store import Index

        if not (self.path / "manifest.json").is_file():
            return None
        encoder = Index.open(self.path, verify="none").config.encoder
        return None if encoder is None else dict(encoder)

    def page_lookup(self) -> tuple[Lookup, list[Any], dict[str, Any] | None]:
        """What ``latemm show`` reads: a ``Lookup`` of the collection's pages, its named fields
        (``FieldSpec``s; none for one encoder's field) and the encoder its page images went
        through (a named image field's; None for precomputed vectors and text only)."""
        from index_store import Index

        index = Index.open(self.path)

        def lookup(doc_id: str) -> dict[str, Any] | None:
            return dict(index.get(doc_id).metadata) if doc_id in index else None

        return lookup, [], index.config.encoder


class ShardedCollection(Collection):
    """Plain shards behind ``shards.json`` (``latemm.index.sharded``); also an unfinished first
    build, whose every verb names how to finish it."""

    kind = "sharded"
    sharded = True

    def check_searchable(self, create: str) -> None:
        from index_store.errors import InputError
        from latemm.index.sharded import is_unfinished_build, unfinished_build_message

        if is_unfinished_build(self.path):
            raise InputError(unfinished_build_message(self.path))

    def info(self) -> dict[str, Any]:
        from latemm.index.sharded import sharded_stats

        return per_page(sharded_stats(self.path))

    def delete(self, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
        from latemm.index.sharded import delete_sharded

        return delete_sharded(self.path, doc_ids, missing_ok=missing_ok)

    def compact(self) -> dict[str, Any]:
        from latemm.index.sharded import compact_sharded

        return {"generation": compact_sharded(self.path)}

    def verify(self) -> list[str]:
        from latemm.index.sharded import verify_sharded

        return verify_sharded(self.path)

    def recorded_encoder(self) -> dict[str, Any] | None:
        from latemm.index.sharded import SHARDS_MANIFEST, read_manifest

        if not (self.path / SHARDS_MANIFEST).is_file():  # a first build not committed yet
            return None
        encoder = read_manifest(self.path).config.encoder
        return None if encoder is None else dict(encoder)

    def page_lookup(self) -> tuple[Lookup, list[Any], dict[str, Any] | None]:
        from index_store import Index
        from latemm.index.sharded import open_shard, read_manifest, shard_of

        sharded = read_manifest(self.path)
        shards: dict[int, Index] = {}

        def lookup(doc_id: str) -> dict[str, Any] | None:
            shard = shard_of(doc_id, sharded.num_shards)
            if shard not in shards:
                shards[shard] = open_shard(self.path, shard, verify="none")
            index = shards[shard]
            return dict(index.get(doc_id).metadata) if doc_id in index else None

        return lookup, [], sharded.config.encoder


class FieldsCollection(Collection):
    """Named fields over one page store (``latemm.index.fields``); deletes go through its journal
    (``latemm.index.field_maintenance``)."""

    kind = "fields"
    named_fields = True

    def check_searchable(self, create: str) -> None:
        """A fields collection opens as committed (``fields.json`` or ``shards.json``)."""

    def info(self) -> dict[str, Any]:
        from index_store import Index
        from latemm.index.fields import open_field, read_fields, read_journal

        pending = read_journal(self.path)  # a reader: an unfinished delete is reported, not run
        fields = []
        manifest = read_fields(self.path)
        for spec in manifest.fields:
            opened = open_field(self.path, spec)
            if isinstance(opened, Index):
                stats = per_page(opened.stats(), opened)
                if stats.get("rejected"):  # pages this field could not read: row, doc_id, file
                    stats["rejects"] = opened.rejects().to_pylist()
            else:
                stats = {
                    "documents": len(opened.doc_ids),
                    "rejected": int(spec.options.get("rejected", 0)),
                }
            fields.append({**spec.to_dict(), "stats": stats})
        report: dict[str, Any] = {"path": str(self.path), "fields": fields}
        if manifest.pages is not None:  # each page's content, stored once (latemm.index.pagestore)
            from latemm.index.pagestore import store_stats

            report["page_store"] = store_stats(self.path, manifest.pages, pending or ())
        if manifest.search_defaults is not None:  # what a search naming no fusion uses (tune)
            report["search_defaults"] = manifest.search_defaults.to_dict()
        if pending is not None:  # searches leave these out; the next writer finishes it
            report["unfinished_delete"] = len(pending)
        return report

    def delete(self, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
        from latemm.index.field_maintenance import delete

        return delete(self.path, doc_ids, missing_ok=missing_ok)

    def compact(self) -> dict[str, Any]:
        from latemm.index.field_maintenance import compact

        return {"fields": compact(self.path)}

    def verify(self) -> list[str]:
        from latemm.index.fields import verify_fields

        return verify_fields(self.path)

    def recorded_encoder(self) -> dict[str, Any] | None:
        return None

    def page_lookup(self) -> tuple[Lookup, list[Any], dict[str, Any] | None]:
        from latemm.index import bm25
        from latemm.index.fields import field_dir, open_field, read_fields, read_journal
        from latemm.index.pagestore import open_store

        manifest = read_fields(self.path)
        store = open_store(self.path, manifest.pages, read_journal(self.path) or ())
        indexes, texts, encoder = [], [], None
        for spec in manifest.fields:
            if spec.kind == "bm25":
                texts.append(bm25.read_docs(field_dir(self.path, spec)))
            else:
                indexes.append(open_field(self.path, spec, verify="none"))
                if encoder is None and spec.reads == "image" and spec.encoder:
                    encoder = spec.encoder

        def lookup(doc_id: str) -> dict[str, Any] | None:
            found: dict[str, Any] | None = None
            for index in indexes:
                if doc_id in index:
                    meta = index.get(doc_id).metadata
                    if found is None:
                        found = dict(meta)
                    elif meta.get("image") is not None and found.get("image") is None:
                        found["image"] = meta["image"]
            if store is not None and doc_id in store:  # the content, stored once
                found = {**(found or {}), **store.pages([doc_id])[doc_id]}
            for docs in texts:
                if doc_id in docs:
                    found = found if found is not None else {}
                    found.setdefault("text", docs[doc_id])
            return found

        return lookup, list(manifest.fields), encoder


class FieldShardsCollection(FieldsCollection):
    """Named fields split into shards behind ``shards.json`` (``latemm.index.field_shards``)."""

    kind = "field_shards"
    sharded = True

    def info(self) -> dict[str, Any]:
        from latemm.index.field_shards import field_shards_stats

        return field_shards_stats(self.path)

    def delete(self, doc_ids: Sequence[Any], *, missing_ok: bool = False) -> int:
        from latemm.index.field_shards import delete_field_shards

        return delete_field_shards(self.path, doc_ids, missing_ok=missing_ok)

    def compact(self) -> dict[str, Any]:
        from latemm.index.field_shards import compact_field_shards

        return {"generation": compact_field_shards(self.path)}

    def verify(self) -> list[str]:
        from latemm.index.field_shards import verify_field_shards

        return verify_field_shards(self.path)

    def page_lookup(self) -> tuple[Lookup, list[Any], dict[str, Any] | None]:
        """Each page from its shard's fields."""
        from latemm.index.field_shards import read_field_shards, shard_layout
        from latemm.index.sharded import shard_of

        collection = read_field_shards(self.path)
        lookups: dict[int, Lookup] = {}
        specs: dict[str, Any] = {}
        encoder = None
        for shard, folder, _ in shard_layout(self.path, collection):
            lookups[shard], own, recorded = FieldsCollection(folder).page_lookup()
            specs = {**{spec.name: spec for spec in own}, **specs}
            encoder = encoder or recorded

        def lookup(doc_id: str) -> dict[str, Any] | None:
            shard = shard_of(doc_id, collection.num_shards)
            return lookups[shard](doc_id) if shard in lookups else None

        return lookup, list(specs.values()), encoder


def open_collection(path: str | Path) -> Collection:
    """The collection in folder ``path``, of whichever kind it holds. A folder holding none is
    a plain one, whose verbs then name what is missing (``index_store``'s errors)."""
    from latemm.index.fields import is_fields_index
    from latemm.index.sharded import is_field_shards, is_sharded, is_unfinished_build

    if is_field_shards(path):
        return FieldShardsCollection(path)
    if is_fields_index(path):
        return FieldsCollection(path)
    if is_sharded(path) or is_unfinished_build(path):
        return ShardedCollection(path)
    return Collection(path)


def index_route(
    index_dir: str | Path, *, encoder: bool, fields: bool, num_shards: int | None, ray: bool
) -> str:
    """Which builder ``latemm index`` and ``latemm.build_index`` use to index into ``index_dir``,
    given what was asked (an encoder, named fields, a shard count, Ray) and what the folder
    holds: ``"plain"``, ``"sharded"``, ``"ray"`` (sharded, encoded on Ray), ``"fields"`` or
    ``"field_shards"``. A request the folder cannot take is an error naming the option, raised
    before any model is loaded. A collection keeps its kind: shards stay shards, named fields
    stay named, and without ``--encoder``/``--field`` the corpus goes into what it records."""
    from index_store.errors import InputError
    from latemm.index.fields import is_fields_index
    from latemm.index.sharded import (
        is_field_shards,
        is_sharded,
        is_unfinished_build,
        is_unfinished_field_build,
    )

    root = Path(index_dir)
    if encoder and fields:
        raise InputError(
            "give --encoder (encoder=: one field) or --field NAME=ENCODER (fields=: named "
            "fields), not both"
        )
    field_shards = is_field_shards(root) or is_unfinished_field_build(root)
    if field_shards and encoder:
        raise InputError(
            f"--encoder builds a one-field index; {root} is a sharded multi-field collection: "
            "leave --encoder out to add the corpus to every recorded field, or add a field with "
            "--field NAME=ENCODER"
        )
    if fields or (not encoder and (is_fields_index(root) or field_shards)):
        if ray:
            what = "--field" if fields else f"{root}'s named fields"
            raise InputError(
                f"--ray cannot be combined with {what}: named fields are indexed in this "
                "process (--shards N shards them); leave out --ray"
            )
        if num_shards is not None and is_fields_index(root):
            raise InputError(
                f"--shards: {root} holds a multi-field index, which is not sharded; leave out "
                "--shards to add to it, or index into a new folder to shard"
            )
        if num_shards is not None or field_shards:
            return "field_shards"
        if is_sharded(root):
            raise InputError(
                f"--field: {root} is a sharded index of one encoder; named fields need an "
                "unsharded index: index into a new folder"
            )
        return "fields"
    if is_fields_index(root):
        raise InputError(
            f"{root} holds named fields; --encoder builds a one-field index. Leave --encoder "
            "out to add the corpus to every recorded field, or add a field with --field "
            "NAME=ENCODER"
        )
    if ray:
        return "ray"
    if num_shards is not None or is_sharded(root) or is_unfinished_build(root):
        return "sharded"
    return "plain"


def per_page(stats: dict[str, Any], index: Any = None) -> dict[str, Any]:
    """``stats`` with the disk bytes per page and, for one index, the bytes its stored page
    content (images, text, metadata: ``meta.parquet``) takes."""
    documents = int(stats.get("documents") or 0)
    if documents and stats.get("disk_bytes") is not None:
        stats["disk_bytes_per_page"] = round(int(stats["disk_bytes"]) / documents)
    if index is not None:
        content = sum(f.size for _, f in index.manifest.files() if f.file == "meta.parquet")
        stats["page_content_bytes"] = content
        if documents:
            stats["page_content_bytes_per_page"] = round(content / documents)
    return stats
