"""Real vector sets for the codec benchmarks beyond Vaswani and ColBERTv2: MMLongBench-Doc pages.

``mmlongbench_set`` gives the pages of ``../shared/data/mmlongbench/pdfs`` as MiniLM token vectors
in the dict shape ``experiments.residual_codec`` measures (``vaswani_set`` / ``colbert_set``):
page ids ``{pdf}#p{page}``, token vectors and offsets, the answerable questions as queries and
their page qrels (``latemm.data.mmlongbench.questions``).

A page's text is its PDF text layer, read by ``latemm.data.ingest.ingest_pdfs`` as ``latemm ingest
--no-images --ocr never`` reads it (no OCR: a page without a text layer is left out and counted in
the set's record). Pages and questions are embedded token by token with the packaged MiniLM
through ``experiments.common.minilm_token_vectors``, the encoding ``vaswani_minilm`` uses.

MiniLM's window is 256 tokens (its ``max_seq_length``); latemm's ``TextEncoder`` does not drop a
longer page's later tokens but encodes it in windows of 256 sharing 64 tokens and stitches them,
so every token of a page is kept, each seeing at most one window of context. The record counts
the tokens per page (mean, max) and the pages longer than one window.

Imports experiments.common, latemm and numpy; experiments code, never imported by the library.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from experiments.common import (
    CACHE,
    minilm_token_vectors,
    mmlongbench_questions,
    shared_data_dir,
)

# MiniLM's window (sentence-transformers' max_seq_length), special tokens included.
MINILM_WINDOW = 256


def mmlongbench_pages(
    pdfs_dir: Path, *, pdfs: Collection[str] | None = None
) -> tuple[list[str], list[str], dict[str, Any]]:
    """(page ids, page texts, record) of the PDFs' text layers (only the files named in ``pdfs``
    when given), read by ``latemm ingest`` with no images and no OCR.

    The record counts the PDFs, their pages, the pages kept and the pages left out for having no
    text layer (with their ids), and any other problem ingest reported.
    """
    from latemm.data.ingest import ingest_pdfs

    files = sorted(p for p in Path(pdfs_dir).iterdir() if p.suffix.lower() == ".pdf")
    if pdfs is not None:
        files = [p for p in files if p.name in pdfs]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.parquet"
        report = ingest_pdfs(files, corpus, images=False, ocr="never", progress=False)
        table = pq.read_table(corpus, columns=["doc_id", "text"]).to_pydict()
    no_layer = [p for p in report.problems if "no text layer" in p]
    record = {
        "pdfs": report.files,
        "pages_read": report.pages + len(report.problems),
        "pages_with_text_layer": report.pages,
        "pages_without_text_layer": len(no_layer),
        "pages_left_out": [_page_id(p) for p in no_layer],
        "other_problems": [p for p in report.problems if p not in no_layer],
    }
    return list(table["doc_id"]), list(table["text"]), record


def mmlongbench_set(
    data_dir: Path | None = None,
    *,
    pdfs: Collection[str] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """MMLongBench-Doc pages and answerable questions as MiniLM token vectors, in
    ``experiments.residual_codec``'s set shape (``vectors`` float32 (T, 384), ``offsets`` int64
    (D+1,), ``query_vectors`` / ``query_offsets`` likewise, ``qrels``), plus a ``record`` of the
    pages left out and of the tokens per page.

    Encoded once and cached as ``mmlongbench-minilm.npz`` under ``cache_dir`` (default
    ``$LATEMM_CACHE``); a subset of ``pdfs`` is cached under its own name. Questions whose
    evidence pages all lack a text layer stay in: they judge pages the set does not hold, as a
    text retriever over these pages would be judged.
    """
    root = (data_dir or shared_data_dir()) / "mmlongbench"
    cache_root = Path(cache_dir) if cache_dir is not None else CACHE
    # A subset's own cache name, stable across processes (str hashes are salted per process).
    names = hashlib.sha256("\n".join(sorted(pdfs or ())).encode()).hexdigest()[:12]
    suffix = "" if pdfs is None else f"-{len(pdfs)}pdfs-{names}"
    cache = cache_root / f"mmlongbench-minilm{suffix}.npz"
    query_ids, questions, qrels = mmlongbench_questions(data_dir, pdfs=pdfs)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            data = dict(stored)
    else:
        page_ids, texts, pages = mmlongbench_pages(root / "pdfs", pdfs=pdfs)
        data = minilm_token_vectors(page_ids, texts, query_ids, questions)
        data["pages_record"] = np.array(json.dumps(pages))
        cache_root.mkdir(parents=True, exist_ok=True)
        # Written aside, then moved into place: a stopped run leaves no partial cache.
        partial = cache.with_name(f".{cache.stem}.partial.npz")
        np.savez(partial, **data)  # type: ignore[arg-type]  # see vaswani_minilm
        partial.replace(cache)
    if [str(q) for q in data["query_ids"]] != query_ids:
        raise ValueError(
            f"{cache}: cached questions differ from {root / 'samples.json'}'s; delete the cache"
        )
    offsets = data["doc_offsets"].astype(np.int64)
    ids = [str(i) for i in data["doc_ids"]]
    lengths = np.diff(offsets)
    record: dict[str, Any] = json.loads(str(data["pages_record"]))
    in_set = set(ids)
    record |= {
        "tokens_per_page_mean": float(lengths.mean()),
        "tokens_per_page_max": int(lengths.max()),
        "tokens_per_page_median": float(np.median(lengths)),
        # Content tokens: a window holds MINILM_WINDOW - 2 ([CLS] and [SEP] are not kept).
        "pages_over_one_window": int((lengths > MINILM_WINDOW - 2).sum()),
        "truncation": (
            "none for pages: TextEncoder encodes a page longer than MiniLM's 256-token window in "
            "windows of 256 sharing 64 tokens and keeps every token (each sees at most one window "
            "of context); questions are capped at one window (none is that long)"
        ),
        "questions": len(query_ids),
        "questions_with_no_judged_page_in_set": sum(
            not (set(qrels[q]) & in_set) for q in query_ids
        ),
    }
    return {
        "set": "mmlongbench-minilm",
        "ids": ids,
        "vectors": data["doc_vectors"].astype(np.float32),
        "offsets": offsets,
        "query_ids": query_ids,
        "query_vectors": data["query_vectors"].astype(np.float32),
        "query_offsets": data["query_offsets"].astype(np.int64),
        "qrels": qrels,
        "documents": len(ids),
        "tokens": int(offsets[-1]),
        "dim": int(data["doc_vectors"].shape[1]),
        "record": record,
    }


def _page_id(problem: str) -> str:
    """``{pdf}#p{page}`` of an ingest problem line ``{path}, page {page}: {reason}``."""
    where = problem.split(": ")[0]
    path, page = where.rsplit(", page ", 1)
    return f"{Path(path).name}#p{page}"
