"""latemm through mteb against latemm through its CLI, on the same data: Vaswani defined as a
local mteb retrieval task (no download), scored by ``mteb.evaluate`` with ``LatemmSearch`` and
by ``latemm index`` + ``latemm search`` + ``latemm eval``. The two nDCG@10 must agree (within
0.002): mteb's harness adds nothing and loses nothing.

Run: ``python -m experiments.mteb_vaswani [--quick | --docs N --queries Q]``. Writes
``results/mteb_vaswani.json`` (a slice: ``results/mteb_vaswani_quick.json``). Two systems: one MiniLM multi-vector field, and a fields index
(MiniLM + BM25, weighted fusion).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from experiments import render
from experiments.common import (
    minilm_path,
    read_trec_docs,
    read_trec_topics,
    shared_data_dir,
    write_result,
)
from experiments.render import Sources

K = 100  # mteb's top_k (max of k_values) and the CLI's --k: the same candidates on both sides


def vaswani_slice(
    data: Path, docs: int | None = None, queries: int | None = None
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus {doc_id: text}, queries {query_id: text}, qrels) of Vaswani. A slice keeps the
    first ``queries`` queries and the first ``docs`` documents plus every document judged for
    a kept query, so each kept query can find its relevant documents."""
    from latemm.runs.metrics import load_qrels

    root = data / "vaswani"
    doc_ids, texts = read_trec_docs(root / "doc-text.trec")
    query_ids, query_texts = read_trec_topics(root / "query-text.trec")
    qrels = load_qrels(root / "qrels")
    kept_queries = dict(zip(query_ids, query_texts, strict=True))
    if queries is not None:
        kept_queries = dict(list(kept_queries.items())[:queries])
    qrels = {q: qrels[q] for q in kept_queries if q in qrels}
    corpus = dict(zip(doc_ids, texts, strict=True))
    if docs is not None:
        judged = {d for judgements in qrels.values() for d in judgements}
        corpus = {d: t for i, (d, t) in enumerate(corpus.items()) if i < docs or d in judged}
    return corpus, kept_queries, qrels


def vaswani_task(corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, int]]):
    """An mteb ``AbsTaskRetrieval`` over the given Vaswani data (built here, nothing fetched)."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    class VaswaniRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="LatemmVaswani",
            description="Vaswani (NPL) physics abstracts, read from the local TREC files.",
            reference="http://ir.dcs.gla.ac.uk/resources/test_collections/npl/",
            dataset={"path": "local/vaswani", "revision": "local"},
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=["test"],
            eval_langs=["eng-Latn"],
            main_score="ndcg_at_10",
            date=("1970-01-01", "1970-12-31"),
            domains=["Academic"],
            task_subtypes=[],
            license="not specified",
            annotations_creators="expert-annotated",
            dialect=[],
            sample_creation="found",
            bibtex_citation="",
        )
        k_values = (1, 3, 5, 10, 20, K)

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            split: Any = {
                "corpus": Dataset.from_dict({"id": list(corpus), "text": list(corpus.values())}),
                "queries": Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
                "relevant_docs": qrels,
                "top_ranked": None,
            }
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return VaswaniRetrieval()


def mteb_ndcg(task: Any, model: Any) -> float:
    """nDCG@10 of ``model`` on ``task`` through ``mteb.evaluate`` (no cache, errors raised)."""
    import mteb

    result = mteb.evaluate(model, task, cache=None, raise_error=True, show_progress_bar=False)
    return float(result.task_results[0].scores["test"][0]["ndcg_at_10"])


def write_files(
    work: Path, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, int]]
) -> tuple[Path, Path, Path]:
    """corpus.parquet, queries.parquet and qrels.txt for the CLI."""
    work.mkdir(parents=True, exist_ok=True)
    corpus_path, query_path, qrels_path = (
        work / "corpus.parquet",
        work / "queries.parquet",
        work / "qrels.txt",
    )
    pq.write_table(pa.table({"doc_id": list(corpus), "text": list(corpus.values())}), corpus_path)
    pq.write_table(
        pa.table({"query_id": list(queries), "text": list(queries.values())}), query_path
    )
    lines = [f"{q} 0 {d} {r}" for q, docs in qrels.items() for d, r in docs.items()]
    qrels_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus_path, query_path, qrels_path


def cli_ndcg(
    work: Path, files: tuple[Path, Path, Path], index_args: list[str], search_args: list[str]
) -> float:
    """nDCG@10 through ``latemm index``, ``latemm search --k 100`` and ``latemm eval``."""
    from latemm.cli import main

    corpus, queries, qrels = files
    index, run, scores = work / "index", work / "run.parquet", work / "eval.json"
    for argv in (
        ["index", str(corpus), "--index", str(index), "--quiet", *index_args],
        ["search", str(index), str(queries), "--out", str(run), "--k", str(K), *search_args],
        ["eval", str(run), str(qrels), "--metrics", "ndcg@10", "--json", str(scores)],
    ):
        code = main(argv)
        if code != 0:
            raise RuntimeError(f"latemm {' '.join(argv)} exited with {code}")
    return float(next(iter(json.loads(scores.read_text()).values()))["ndcg@10"])


def systems(encoder: str) -> dict[str, dict[str, Any]]:
    """Each compared system: its LatemmSearch arguments and the CLI's flags for the same."""
    return {
        "minilm": {
            "mteb": {"encoder": encoder},
            "index": ["--encoder", encoder],
            "search": [],
        },
        "minilm+bm25 weighted": {
            "mteb": {"fields": {"text": encoder, "bm25": "bm25"}, "fusion": "weighted"},
            "index": ["--field", f"text={encoder}", "--field", "bm25=bm25"],
            "search": ["--fusion", "weighted"],
        },
    }


def compare(
    data: Path, work: Path, *, docs: int | None, queries: int | None, names: list[str] | None = None
) -> dict[str, Any]:
    """Both paths for every system: {name: {mteb, cli, difference, seconds}}."""
    from latemm.mteb import LatemmSearch

    corpus, kept, qrels = vaswani_slice(data, docs, queries)
    files = write_files(work / "data", corpus, kept, qrels)
    out: dict[str, Any] = {"documents": len(corpus), "queries": len(kept), "systems": {}}
    for name, system in systems(minilm_path()).items():
        if names is not None and name not in names:
            continue
        slug = name.replace(" ", "-").replace("+", "-")
        t0 = time.perf_counter()
        via_mteb = mteb_ndcg(
            vaswani_task(corpus, kept, qrels),
            LatemmSearch(work_dir=work / f"mteb-{slug}", **system["mteb"]),
        )
        t1 = time.perf_counter()
        via_cli = cli_ndcg(work / f"cli-{slug}", files, system["index"], system["search"])
        t2 = time.perf_counter()
        out["systems"][name] = {
            "mteb_ndcg@10": via_mteb,
            "cli_ndcg@10": via_cli,
            "difference": abs(via_mteb - via_cli),
            "mteb_seconds": t1 - t0,
            "cli_seconds": t2 - t1,
        }
        print(f"{name}: mteb {via_mteb:.4f}, cli {via_cli:.4f} ({t1 - t0:.0f}s, {t2 - t1:.0f}s)")
    return out


def main(argv: list[str] | None = None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help="slice: first N documents")
    parser.add_argument("--queries", type=int, default=None, help="slice: first Q queries")
    parser.add_argument("--data", type=Path, default=None, help="default ../shared/data")
    parser.add_argument("--quick", action="store_true", help="a slice: --docs 300 --queries 20")
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.queries = args.docs or 300, args.queries or 20
    with tempfile.TemporaryDirectory(prefix="mteb-vaswani-") as tmp:
        payload = compare(
            args.data or shared_data_dir(), Path(tmp), docs=args.docs, queries=args.queries
        )
    name = "mteb_vaswani" if args.docs is None and args.queries is None else "mteb_vaswani_quick"
    print(write_result(name, {"k": K, **payload}))


# ------------------------------------------------------------------------------ report
def render_section(record: dict[str, Any], sources: Sources) -> str:
    """latemm through mteb (LatemmSearch) against latemm's CLI on a local Vaswani task."""
    lines = [
        "## 4d. latemm inside mteb: the same nDCG@10 as the CLI",
        "",
        render.provenance(record),
        "",
        f"Vaswani as a local mteb `AbsTaskRetrieval` ({record['documents']:,} documents, "
        f"{record['queries']} queries, top {record['k']}): `mteb.evaluate` with "
        "`latemm.mteb.LatemmSearch` against `latemm index` + `latemm search` + `latemm eval` "
        "on the same files.",
        "",
        "| system | mteb nDCG@10 | CLI nDCG@10 | difference | mteb s | CLI s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in record["systems"].items():
        lines.append(
            f"| {name} | {row['mteb_ndcg@10']:.4f} | {row['cli_ndcg@10']:.4f} | "
            f"{row['difference']:.1e} | {row['mteb_seconds']:.0f} | {row['cli_seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
