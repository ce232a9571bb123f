"""MMLongBench-Doc page retrieval as files the CLI reads: questions and qrels from ``samples.json``.

A question's relevant pages are ``{pdf}#p{page}`` (the ``doc_id`` that ``latemm ingest`` gives a
page) for each of its 1-based ``evidence_pages``; questions without evidence pages are
unanswerable and left out. Imports pyarrow and the standard library only.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Collection
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import InputError


def questions(
    samples: str | Path, *, pdfs: Collection[str] | None = None
) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """(query ids, questions, qrels) of the answerable questions in ``samples`` (the
    ``samples.json`` file), restricted to questions about ``pdfs`` (file names) when given.

    Query ids are ``q{i}`` with ``i`` the question's position in the file, so a subset keeps
    the ids of the whole set.
    """
    path = Path(samples)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable samples.json ({exc})") from exc
    ids, texts, qrels = [], [], {}
    for i, sample in enumerate(records):
        pages = sample.get("evidence_pages") or "[]"
        pages = ast.literal_eval(pages) if isinstance(pages, str) else pages
        if not pages or (pdfs is not None and sample["doc_id"] not in pdfs):
            continue
        ids.append(f"q{i}")
        texts.append(sample["question"])
        qrels[f"q{i}"] = {f"{sample['doc_id']}#p{int(p)}": 1 for p in pages}
    return ids, texts, qrels


def write_questions(
    samples: str | Path,
    queries_out: str | Path,
    qrels_out: str | Path,
    *,
    pdfs: Collection[str] | None = None,
) -> int:
    """Write the answerable questions as a queries Parquet file (``query_id``, ``text``) and
    their relevant pages as TREC qrels (``qid 0 doc_id 1``); returns the number of questions."""
    ids, texts, qrels = questions(samples, pdfs=pdfs)
    pq.write_table(pa.table({"query_id": ids, "text": texts}), queries_out)
    lines = [f"{q} 0 {doc} {rel}\n" for q in ids for doc, rel in qrels[q].items()]
    Path(qrels_out).write_text("".join(lines), encoding="utf-8")
    return len(ids)
