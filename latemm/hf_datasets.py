"""Hugging Face dataset folders read as they are, and ViDoRe v3 converted to latemm's contract.

- ``hf_dataset(path)``: a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``:
  ``state.json`` and ``data-*.arrow``; a ``DatasetDict``: ``dataset_dict.json`` and one such
  folder per split) or a dataset repository's Parquet shards (``data/*.parquet``, or
  ``<config>/<split>-*.parquet`` beside a ``README.md``) as one pyarrow dataset, so every
  command that reads a corpus or queries file takes such a folder directly (``latemm.io``'s
  ``open_dataset`` asks here first). ``save_to_disk``'s Arrow files are streams, memory-mapped,
  not copied.
- ``vidore_v3(source, ...)``: ViDoRe v3 (``corpus``: ``corpus_id``, ``image``, ``doc_id``,
  ``markdown``, ...; ``queries``: ``query_id``, ``query``, ``language``, ``query_types``,
  ``answer``, ...; ``qrels``: ``query_id``, ``corpus_id``, ``score``, ``bounding_boxes``, ...)
  to ``corpus.parquet`` / ``queries.parquet`` / ``qrels.txt`` plus ``qrels.parquet`` (the
  judgements with their bounding boxes). Every other column stays as metadata. ViDoRe v3.1's
  OCR ``markdown`` becomes the page ``text``; the source document id ``doc_id`` becomes
  ``source_doc_id`` (``doc_id`` is latemm's page id).

Imports pyarrow only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from index_store.errors import InputError


def _arrow_stream(path: Path) -> pa.Table:
    """One ``save_to_disk`` Arrow file (IPC stream format), memory-mapped."""
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path} is not a readable Arrow file of a saved dataset ({exc})") from exc


def _saved_dataset(folder: Path) -> pa.Table:
    """The rows of one ``save_to_disk`` ``Dataset`` folder, in its files' order."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{folder / 'state.json'} does not list the dataset's Arrow files ({exc}); save the "
            "dataset again with save_to_disk"
        ) from exc
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{folder}: saved dataset files missing: {', '.join(missing)}")
    tables = [_arrow_stream(f) for f in files]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _split_folders(folder: Path) -> list[Path]:
    """The split folders of a saved ``DatasetDict``, in ``dataset_dict.json``'s order."""
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"{folder / 'dataset_dict.json'} is not a saved DatasetDict ({exc})"
        ) from exc
    return [folder / s for s in splits]


def is_hf_dataset(path: str | Path) -> bool:
    """A ``save_to_disk`` folder or a dataset repository's Parquet shards."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        return True
    return _repo_shards(folder) is not None


def _repo_shards(folder: Path) -> list[Path] | None:
    """A repository's Parquet shards: ``data/**/*.parquet``, or, beside a ``README.md`` (the
    dataset card), every ``*.parquet`` below the folder; None for a plain Parquet folder."""
    if (folder / "data").is_dir():
        shards = sorted((folder / "data").rglob("*.parquet"))
        if shards:
            return shards
    if (folder / "README.md").is_file():
        shards = sorted(
            p
            for p in folder.rglob("*.parquet")
            if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
        )
        return shards or None
    return None


def hf_dataset(path: str | Path, *, split: str | None = None) -> ds.Dataset | None:
    """The rows of a Hugging Face dataset folder (see the module docstring) as a pyarrow
    dataset, or None when ``path`` is not one. A saved ``DatasetDict`` gives ``split`` (default:
    its only split; several splits need one named)."""
    folder = Path(path)
    if not is_hf_dataset(folder):
        return None
    if (folder / "dataset_dict.json").is_file():
        splits = _split_folders(folder)
        names = [s.name for s in splits]
        if split is None and len(splits) > 1:
            raise InputError(
                f"{folder} is a saved DatasetDict with splits {', '.join(names)}: point at one "
                f"of them ({folder / names[0]})"
            )
        chosen = [s for s in splits if split is None or s.name == split]
        if not chosen:
            raise InputError(f"{folder} has no split {split!r} (splits: {', '.join(names)})")
        return ds.dataset(_saved_dataset(chosen[0]))
    if (folder / "state.json").is_file():
        return ds.dataset(_saved_dataset(folder))
    shards = _repo_shards(folder) or []
    try:
        schema = pa.unify_schemas([pq.read_schema(s) for s in shards])
        return ds.dataset([str(s) for s in shards], schema=schema, format="parquet")
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InputError(f"{folder}: its Parquet shards cannot be read together ({exc})") from exc


# ------------------------------------------------------------------------------ ViDoRe v3

V3_CORPUS = ("corpus_id", "image")
V3_QUERIES = ("query_id", "query")
V3_QRELS = ("query_id", "corpus_id", "score")


def _part_table(root: Path, name: str) -> tuple[Path, pa.Table]:
    """``root/<name>``: a saved dataset, Parquet shards, a folder of them or ``<name>.parquet``."""
    from latemm.io import open_dataset

    for candidate in (root / name, root / f"{name}.parquet"):
        if candidate.exists():
            return candidate, open_dataset(candidate).to_table()
    raise InputError(
        f"{root}: no {name!r} part; ViDoRe v3 has corpus/, queries/ and qrels/ (Parquet shards "
        "or save_to_disk folders)"
    )


def _need(path: Path, table: pa.Table, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(
            f"{path}: missing ViDoRe v3 column(s) {', '.join(map(repr, missing))} (columns: "
            f"{', '.join(table.column_names)})"
        )


def _renamed(table: pa.Table, renames: dict[str, str]) -> pa.Table:
    return table.rename_columns([renames.get(c, c) for c in table.column_names])


def is_vidore_v3(path: str | Path) -> bool:
    """A folder with a ``corpus`` part whose pages are keyed by ``corpus_id``."""
    from latemm.io import open_dataset

    root = Path(path)
    corpus = root / "corpus"
    if not corpus.exists():
        return False
    try:
        return "corpus_id" in open_dataset(corpus).schema.names
    except InputError:
        return False


def vidore_v3(source: str | Path, corpus: Path, queries: Path, qrels: Path) -> tuple[int, int, int]:
    """Convert ViDoRe v3 (or v3.1, with OCR markdown) at ``source``; returns the numbers of
    pages, queries and judgements. ``qrels.parquet`` beside ``qrels`` keeps every judgement
    column (``bounding_boxes``, ``content_type``, ...)."""
    from latemm.loaders import _write_qrels

    root = Path(source)
    corpus_path, pages = _part_table(root, "corpus")
    _need(corpus_path, pages, V3_CORPUS)
    renames = {"corpus_id": "doc_id", "doc_id": "source_doc_id"}
    if "markdown" in pages.column_names and "text" not in pages.column_names:
        renames["markdown"] = "text"  # v3.1: the OCR'ed page as its text
    pages = _renamed(pages, renames)
    pages = pages.set_column(
        pages.column_names.index("doc_id"), "doc_id", pc.cast(pages.column("doc_id"), pa.string())
    )
    pq.write_table(pages, corpus)

    query_path, asked = _part_table(root, "queries")
    _need(query_path, asked, V3_QUERIES)
    asked = _renamed(asked, {"query": "text"})
    asked = asked.set_column(
        asked.column_names.index("query_id"),
        "query_id",
        pc.cast(asked.column("query_id"), pa.string()),
    )
    pq.write_table(asked, queries)

    qrels_path, judged = _part_table(root, "qrels")
    _need(qrels_path, judged, V3_QRELS)
    judged = _renamed(judged, {"corpus_id": "doc_id", "score": "relevance"})
    for column in ("query_id", "doc_id"):
        judged = judged.set_column(
            judged.column_names.index(column), column, pc.cast(judged.column(column), pa.string())
        )
    pq.write_table(judged, qrels.with_suffix(".parquet"))
    rows = zip(
        *(judged.column(c).to_pylist() for c in ("query_id", "doc_id", "relevance")), strict=True
    )
    judgements = [(q, d, int(r)) for q, d, r in rows]
    _write_qrels(qrels, judgements)
    return pages.num_rows, asked.num_rows, len(judgements)
