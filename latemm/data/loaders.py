"""Benchmark formats users already have, converted to latemm's Parquet contract.

``convert(source, out_dir)`` writes ``corpus.parquet`` (``doc_id``, ``image`` and/or ``text``,
metadata), ``queries.parquet`` (``query_id``, ``text``) and ``qrels.txt`` (TREC qrels), ready for
``latemm index``, ``latemm search`` and ``latemm eval``. Formats:

- ``vidore-v1``: ViDoRe v1 question-answering sets (``vidore/docvqa_test_subsampled`` and the
  like): one row per (optional query, page image) with ``query``, ``image``, ``image_filename``.
  Pages are deduplicated by ``image_filename`` (the page's id), queries by their text, and each
  query's relevant page is the one in its row, as the ViDoRe evaluator does.
- ``vidore-v2``: ViDoRe v2 / BEIR-style Hugging Face datasets: ``corpus`` (``corpus-id``,
  ``image``, ...), ``queries`` (``query-id``, ``query``) and ``qrels`` (``query-id``,
  ``corpus-id``, ``score``) Parquet files or folders.
- ``vidore-v3``: ViDoRe v3 / v3.1 (``corpus_id``/``query_id`` columns, OCR ``markdown``), see
  ``vidore_v3`` below; also writes ``qrels.parquet`` with the judgements' bounding boxes.
- ``beir``: the classic BEIR layout: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
  ``queries.jsonl`` (``_id``, ``text``) and ``qrels/{split}.tsv``.

Corpora stream through in record batches; images are never decoded. Imports pyarrow only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index_store.errors import InputError
from latemm.data.io import open_dataset, trec_safe, write_parquet

FORMATS = ("vidore-v1", "vidore-v2", "vidore-v3", "beir")
# Per-query columns of ViDoRe v1 rows: they describe the question, not the page.
_V1_QUERY_COLUMNS = {"query", "answer", "answer_type", "prompt", "model", "options"}


@dataclass(frozen=True)
class Converted:
    corpus: Path
    queries: Path
    qrels: Path
    documents: int
    num_queries: int
    judgements: int


def detect_format(source: str | Path) -> str:
    """Guess the format of a file or folder (see the module docstring)."""
    path = Path(source)
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return "beir"
        if is_vidore_v3(path):
            return "vidore-v3"
        if _part(path, "corpus") is not None:
            return "vidore-v2"
    names = open_dataset(path).schema.names
    if {"query", "image_filename"} <= set(names):
        return "vidore-v1"
    raise InputError(
        f"{path}: cannot tell its format: expected a ViDoRe v1 Parquet file or folder (query, "
        "image, image_filename columns), a folder with corpus/queries/qrels Parquet (ViDoRe v2), "
        "or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/); name it with --format"
    )


def convert(
    source: str | Path,
    out_dir: str | Path,
    *,
    format: str | None = None,
    split: str = "test",
) -> Converted:
    """Convert a benchmark at ``source`` into ``out_dir``/{corpus.parquet, queries.parquet,
    qrels.txt}. ``split`` picks BEIR's ``qrels/{split}.tsv``."""
    fmt = format or detect_format(source)
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "corpus.parquet", out / "queries.parquet", out / "qrels.txt"
    if fmt == "vidore-v1":
        counts = _vidore_v1(Path(source), *paths)
    elif fmt == "vidore-v2":
        counts = _vidore_v2(Path(source), *paths)
    elif fmt == "vidore-v3":
        counts = vidore_v3(Path(source), *paths)
    else:
        counts = _beir(Path(source), *paths, split=split)
    return Converted(*paths, *counts)


# ------------------------------------------------------------------------------- helpers
def _part(root: Path, name: str) -> Path | None:
    """``root/name`` (a folder or ``name.parquet``), or the Parquet files under root whose names
    start with ``name`` (Hugging Face's ``corpus-00000-of-00001.parquet`` layouts)."""
    for candidate in (root / name, root / f"{name}.parquet"):
        if candidate.exists():
            return candidate
    matches = sorted(root.rglob(f"{name}*.parquet"))
    if len(matches) == 1:
        return matches[0]
    return matches[0].parent if matches else None


def _required_part(root: Path, name: str) -> Path:
    found = _part(root, name)
    if found is None:
        raise InputError(
            f"{root}: no {name!r} part (expected {root / name}/ or {name}*.parquet files)"
        )
    return found


def _require_columns(path: Path, names: list[str], needed: list[str]) -> None:
    missing = [c for c in needed if c not in names]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(columns: {', '.join(names)})"
        )


def write_qrels(path: Path, qrels: list[tuple[str, str, int]]) -> None:
    if not qrels:
        raise InputError(f"no relevance judgements to write to {path}")
    for q, d, _ in qrels:  # TREC fields are whitespace-separated: such ids would corrupt it
        fix = "rename the ids in the source (the corpus and queries Parquet files were written)"
        trec_safe(q, "query id", str(path), fix)
        trec_safe(d, "doc id", str(path), fix)
    path.write_text("".join(f"{q} 0 {d} {r}\n" for q, d, r in qrels), encoding="utf-8")


def _as_string(table: pa.Table, old: str, new: str) -> pa.Table:
    column = pc.cast(table.column(old), pa.string())
    table = table.drop_columns([old])
    return table.add_column(0, new, column)


# ------------------------------------------------------------------------------- formats
def _vidore_v1(source: Path, corpus: Path, queries: Path, qrels: Path) -> tuple[int, int, int]:
    dataset = open_dataset(source)
    names = dataset.schema.names
    _require_columns(source, names, ["query", "image", "image_filename"])
    seen_pages: set[str] = set()
    query_ids: dict[str, str] = {}  # query text -> id, in first-seen order
    relevant: dict[str, str] = {}  # query id -> page
    keep = [c for c in names if c not in _V1_QUERY_COLUMNS]

    def pages() -> Iterator[pa.Table]:
        row = 0
        for batch in dataset.to_batches(columns=names):
            table = pa.Table.from_batches([batch])
            filenames = table.column("image_filename").to_pylist()
            for i, (query, filename) in enumerate(
                zip(table.column("query").to_pylist(), filenames, strict=True)
            ):
                if filename is None:
                    raise InputError(f"{source}, row {row + i}: image_filename is null")
                # As the ViDoRe evaluator: queries deduplicated by text, and a repeated query's
                # relevant page is the last one it was asked of.
                if query is not None:
                    query_id = query_ids.setdefault(query, f"q{len(query_ids)}")
                    relevant[query_id] = filename
            fresh = [i for i, f in enumerate(filenames) if f not in seen_pages]
            for i in fresh:
                seen_pages.add(filenames[i])
            row += table.num_rows
            if fresh:
                pages_table = table.select(keep).take(pa.array(fresh))
                if "text_description" in pages_table.column_names:
                    pages_table = pages_table.rename_columns(
                        ["text" if c == "text_description" else c for c in pages_table.column_names]
                    )
                yield _as_string(pages_table, "image_filename", "doc_id")

    documents = write_parquet(corpus, pages())
    write_parquet(
        queries,
        iter([pa.table({"query_id": list(query_ids.values()), "text": list(query_ids.keys())})]),
    )
    write_qrels(qrels, [(q, d, 1) for q, d in relevant.items()])
    return documents, len(query_ids), len(relevant)


def _vidore_v2(source: Path, corpus: Path, queries: Path, qrels: Path) -> tuple[int, int, int]:
    corpus_src, queries_src, qrels_src = (
        _required_part(source, name) for name in ("corpus", "queries", "qrels")
    )
    corpus_ds = open_dataset(corpus_src)
    _require_columns(corpus_src, corpus_ds.schema.names, ["corpus-id"])

    def pages() -> Iterator[pa.Table]:
        for batch in corpus_ds.to_batches():
            table = _as_string(pa.Table.from_batches([batch]), "corpus-id", "doc_id")
            if "markdown" in table.column_names and "text" not in table.column_names:
                table = table.rename_columns(
                    ["text" if c == "markdown" else c for c in table.column_names]
                )
            yield table

    documents = write_parquet(corpus, pages())
    q_table = open_dataset(queries_src).to_table()
    _require_columns(queries_src, q_table.column_names, ["query-id", "query"])
    n_queries = write_parquet(
        queries,
        iter(
            [
                pa.table(
                    {
                        "query_id": pc.cast(q_table.column("query-id"), pa.string()),
                        "text": q_table.column("query"),
                    }
                )
            ]
        ),
    )
    r_table = open_dataset(qrels_src).to_table()
    _require_columns(qrels_src, r_table.column_names, ["query-id", "corpus-id", "score"])
    judgements = [
        (str(q), str(d), int(s))
        for q, d, s in zip(
            *(r_table.column(c).to_pylist() for c in ("query-id", "corpus-id", "score")),
            strict=True,
        )
    ]
    write_qrels(qrels, judgements)
    return documents, n_queries, len(judgements)


def _jsonl(path: Path, needed: list[str]) -> Iterator[tuple[int, dict[str, object]]]:
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {number}: not valid JSON ({exc})") from exc
            missing = [k for k in needed if k not in record]
            if missing:
                raise InputError(f"{path}, line {number}: missing {', '.join(missing)}")
            yield number, record


def _beir(
    source: Path, corpus: Path, queries: Path, qrels: Path, *, split: str
) -> tuple[int, int, int]:
    def documents(batch_rows: int = 10_000) -> Iterator[pa.Table]:
        ids, texts, titles = [], [], []
        for _, record in _jsonl(source / "corpus.jsonl", ["_id", "text"]):
            ids.append(str(record["_id"]))
            titles.append(str(record.get("title") or ""))
            title = titles[-1]
            texts.append(f"{title}\n{record['text']}" if title else str(record["text"]))
            if len(ids) >= batch_rows:
                yield pa.table({"doc_id": ids, "text": texts, "title": titles})
                ids, texts, titles = [], [], []
        if ids:
            yield pa.table({"doc_id": ids, "text": texts, "title": titles})

    n_docs = write_parquet(corpus, documents())
    q_ids, q_texts = [], []
    for _, record in _jsonl(source / "queries.jsonl", ["_id", "text"]):
        q_ids.append(str(record["_id"]))
        q_texts.append(str(record["text"]))
    qrels_src = source / "qrels" / f"{split}.tsv"
    if not qrels_src.is_file():
        raise InputError(f"{qrels_src} does not exist (pick another split with --split)")
    judgements = []
    for number, line in enumerate(qrels_src.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split("\t")
        if number == 1 and parts[0] == "query-id":
            continue
        if len(parts) != 3:
            raise InputError(f"{qrels_src}, line {number}: expected 'query-id corpus-id score'")
        judgements.append((parts[0], parts[1], int(parts[2])))
    judged = {q for q, _, _ in judgements}
    keep = [i for i, q in enumerate(q_ids) if q in judged]  # BEIR queries.jsonl spans all splits
    n_queries = write_parquet(
        queries,
        iter(
            [pa.table({"query_id": [q_ids[i] for i in keep], "text": [q_texts[i] for i in keep]})]
        ),
    )
    write_qrels(qrels, judgements)
    return n_docs, n_queries, len(judgements)


# ------------------------------------------------------------------------------ ViDoRe v3

V3_CORPUS = ("corpus_id", "image")
V3_QUERIES = ("query_id", "query")
V3_QRELS = ("query_id", "corpus_id", "score")


def _part_table(root: Path, name: str) -> tuple[Path, pa.Table]:
    """``root/<name>``: a saved dataset, Parquet shards, a folder of them or ``<name>.parquet``."""
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
    write_qrels(qrels, judgements)
    return pages.num_rows, asked.num_rows, len(judgements)
