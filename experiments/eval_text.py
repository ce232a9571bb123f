"""Retrieval quality with the offline MiniLM encoder on real labelled data, next to BM25 and a
single-vector MiniLM baseline, all in one run.

Run: ``python -m experiments.eval_text [--quick]``. Writes ``results/eval_text.json``.

- Vaswani (11,429 abstracts, 93 queries): nDCG@10.
- MMLongBench-Doc page retrieval: the 46 PDFs are ingested (page text), indexed and searched
  through the same functions the CLI runs (``latemm ingest``, ``latemm index --encoder``,
  ``latemm search``, ``latemm eval``); nDCG@5 and recall@10 over the answerable questions.

Systems: latemm multi-vector MiniLM (FDE first stage + exact MaxSim), the same pipeline with
mean-pooled MiniLM (one vector per page: a dense baseline through the same index), and BM25
(bm25s) on the same text. Metrics come from ranx; the paired t-test is ranx's.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from experiments import render
from experiments.common import (
    CACHE,
    minilm_path,
    mmlongbench_questions,
    read_trec_docs,
    read_trec_topics,
    shared_data_dir,
    write_result,
)
from experiments.render import Sources
from latemm.encoders.text import TextEncoder
from latemm.index.pipeline import index_corpus
from latemm.runs.jobs import search_file
from latemm.runs.metrics import compare, evaluate, load_qrels, load_run


def bm25_run(
    doc_ids: list[str], texts: list[str], query_ids: list[str], queries: list[str], k: int = 100
) -> dict[str, dict[str, float]]:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    results, scores = retriever.retrieve(
        bm25s.tokenize(queries, stopwords="en", show_progress=False),
        k=min(k, len(texts)),
        show_progress=False,
    )
    return {
        q: {doc_ids[int(d)]: float(s) for d, s in zip(results[i], scores[i], strict=True)}
        for i, q in enumerate(query_ids)
    }


def latemm_runs(
    name: str, corpus: Path, queries: Path, work: Path, k: int = 100
) -> dict[str, dict[str, dict[str, float]]]:
    runs = {}
    for label, pooling in (("latemm-minilm-multivector", None), ("minilm-single-vector", "mean")):
        encoder = TextEncoder(minilm_path(), pooling=pooling)
        index_dir = work / f"{name}-{label}"
        t0 = time.perf_counter()
        index_corpus(corpus, index_dir, encoder=encoder, progress=False)
        t_index = time.perf_counter() - t0
        run_path = work / f"{name}-{label}.run.parquet"
        t0 = time.perf_counter()
        search_file(index_dir, queries, run_path, encoder=encoder, k=k, progress=False)
        t_search = time.perf_counter() - t0
        print(f"  {name} {label}: index {t_index:.0f}s, search {t_search:.1f}s")
        runs[label] = load_run(run_path)
    return runs


def evaluate_all(
    name: str,
    runs: dict[str, dict[str, dict[str, float]]],
    qrels: dict[str, dict[str, int]],
    metrics: list[str],
) -> dict[str, object]:
    scores = {label: evaluate(run, qrels, metrics) for label, run in runs.items()}
    report = compare(runs, qrels, metrics)
    print(report)
    return {
        "metrics": scores,
        "paired_t_test": report.to_dict() if hasattr(report, "to_dict") else str(report),
    }


@dataclass(frozen=True)
class TextBench:
    """A labelled text retrieval set written as corpus and query Parquet files."""

    corpus: Path
    queries: Path
    qrels: dict[str, dict[str, int]]
    query_ids: list[str]
    query_texts: list[str]
    report: Any = None  # the ingest report (MMLongBench-Doc)


def vaswani_files(data: Path, work: Path, quick: bool) -> TextBench:
    """Vaswani as corpus and query Parquet files (``eval_fusion`` reuses them)."""
    root = data / "vaswani"
    doc_ids, texts = read_trec_docs(root / "doc-text.trec")
    query_ids, queries = read_trec_topics(root / "query-text.trec")
    if quick:
        doc_ids, texts = doc_ids[:3000], texts[:3000]
    corpus, qfile = work / "vaswani-corpus.parquet", work / "vaswani-queries.parquet"
    pq.write_table(pa.table({"doc_id": doc_ids, "text": texts}), corpus)
    pq.write_table(pa.table({"query_id": query_ids, "text": queries}), qfile)
    return TextBench(corpus, qfile, load_qrels(root / "qrels"), query_ids, queries)


def vaswani(data: Path, work: Path, quick: bool) -> dict[str, object]:
    files = vaswani_files(data, work, quick)
    table = pq.read_table(files.corpus)
    doc_ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
    query_ids, queries = files.query_ids, files.query_texts
    runs = {"bm25": bm25_run(doc_ids, texts, query_ids, queries)}
    runs.update(
        latemm_runs("vaswani" + ("-quick" if quick else ""), files.corpus, files.queries, work)
    )
    return {
        "documents": len(doc_ids),
        "queries": len(query_ids),
        **evaluate_all("vaswani", runs, files.qrels, ["ndcg@10", "recall@100", "mrr@10"]),
    }


def mmlongbench_files(data: Path, work: Path, quick: bool) -> TextBench:
    """MMLongBench-Doc's PDFs ingested as page text (``latemm ingest --no-images``) and its
    answerable questions whose PDFs are all present, as Parquet files (``eval_fusion`` reuses
    them)."""
    from latemm.data.ingest import ingest_pdfs

    pdfs = sorted((data / "mmlongbench" / "pdfs").glob("*.pdf"))
    if quick:
        pdfs = pdfs[:8]
    corpus = work / ("mmlongbench-text" + ("-quick" if quick else "") + ".parquet")
    t0 = time.perf_counter()
    report = ingest_pdfs(pdfs, corpus, images=False, progress=False)
    print(
        f"  ingested {report.pages} pages from {report.files} PDFs in {time.perf_counter() - t0:.0f}s ({len(report.problems)} pages skipped)"
    )
    query_ids, questions, qrels = mmlongbench_questions(data, pdfs={p.name for p in pdfs})
    qfile = work / "mmlongbench-queries.parquet"
    pq.write_table(pa.table({"query_id": query_ids, "text": questions}), qfile)
    return TextBench(corpus, qfile, qrels, query_ids, questions, report)


def mmlongbench(data: Path, work: Path, quick: bool) -> dict[str, object]:
    files = mmlongbench_files(data, work, quick)
    corpus, qfile, qrels = files.corpus, files.queries, files.qrels
    query_ids, questions, report = files.query_ids, files.query_texts, files.report
    table = pq.read_table(corpus, columns=["doc_id", "text"])
    runs = {
        "bm25": bm25_run(
            table.column("doc_id").to_pylist(),
            table.column("text").to_pylist(),
            query_ids,
            questions,
        )
    }
    runs.update(latemm_runs("mmlongbench" + ("-quick" if quick else ""), corpus, qfile, work))
    return {
        "pages": report.pages,
        "pdfs": report.files,
        "skipped_pages": report.problems,
        "questions": len(query_ids),
        **evaluate_all("mmlongbench", runs, qrels, ["ndcg@5", "recall@10", "ndcg@10", "mrr@10"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 Vaswani abstracts, 8 PDFs")
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else shared_data_dir()
    work = CACHE / "eval_text"
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "mmlongbench": mmlongbench(data, work, args.quick),
        "vaswani": vaswani(data, work, args.quick),
    }
    path = write_result("eval_text" + ("_quick" if args.quick else ""), results)
    print(f"wrote {path}")


# ------------------------------------------------------------------------------ report
def render_section(r: dict[str, Any], sources: Sources) -> str:
    out = ["## 4. Quality on real labelled data (offline MiniLM)", render.provenance(r), ""]
    for name in ("mmlongbench", "vaswani"):
        block = r.get(name)
        if not block:
            continue
        metrics = block["metrics"]
        names = list(next(iter(metrics.values())))
        out.append(f"**{name}**\n")
        out.append(
            render.table(
                ["system", *names],
                [[system, *[values[m] for m in names]] for system, values in metrics.items()],
            )
        )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
