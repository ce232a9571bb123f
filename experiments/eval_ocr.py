"""OCR at ingest on MMLongBench-Doc: how well the OCR reads, and what it does for the main job.

Run: ``python -m experiments.eval_ocr [--part oracle|main|all] [--sample N]``. Writes (and
updates, one part at a time) ``results/eval_ocr.json``.

- ``oracle``: born-digital pages (a text layer of 200 visible characters or more), a seeded
  random sample. Each page is rendered as ``latemm ingest`` renders a page it OCRs and read by
  the default engine; the OCR text is compared with the page's own text layer: character error
  rate (Levenshtein distance over the layer's length, whitespace runs collapsed) and word recall
  (share of the layer's lower-cased words, counted with multiplicity, that the OCR text has),
  median and 90th percentile, and the OCR's pages/s in worker processes (one per core).
  ``--budget S`` scores the pages read within S seconds (pages are read in sample order).
  Reading order counts against the CER (a sidebar read before the body is an error); word recall
  does not depend on order.
- ``main``: the README's main job on every PDF, ``ingest`` -> ``index --encoder MiniLM`` ->
  ``search``, once with ``--ocr never`` (before) and once with the default ``--ocr auto``
  (after), both with ``--no-images`` (the text encoder reads no image; the pages OCR reads are
  rendered either way). Pages without text, nDCG@5 over every answerable question and over the
  questions whose evidence pages all lack a text layer, and ranx's paired t-test between the two
  runs. ``--max-ocr-pages N`` keeps the PDFs with at most N pages to OCR (on a busy 2-core
  machine OCR runs at a few pages a minute). The corpora live in ``experiments/cache/eval_ocr/``;
  an interrupted after-ingest resumes from its OCR journal there.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from experiments import render
from experiments.common import CACHE, RESULTS, minilm_path, shared_data_dir, write_result
from experiments.render import Sources

NAME = "eval_ocr"
WORD = re.compile(r"\w+", re.UNICODE)
PAGE = re.compile(r"^.*?, page \d+(?=: )")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cer(found: str, reference: str) -> float:
    from rapidfuzz.distance import Levenshtein

    found, reference = " ".join(found.split()), " ".join(reference.split())
    return Levenshtein.distance(found, reference) / max(1, len(reference))


def word_recall(found: str, reference: str) -> float:
    want = Counter(w.lower() for w in WORD.findall(reference))
    have = Counter(w.lower() for w in WORD.findall(found))
    return sum((want & have).values()) / max(1, sum(want.values()))


def born_digital_pages(pdfs: list[Path], min_chars: int = 200) -> list[tuple[Path, int, str]]:
    """(pdf, 0-based page, layer text) of every page whose layer has ``min_chars`` or more."""
    import pypdfium2 as pdfium

    pages = []
    for path in pdfs:
        pdf = pdfium.PdfDocument(str(path))
        for number in range(len(pdf)):
            text = pdf[number].get_textpage().get_text_range()
            if len("".join(text.split())) >= min_chars:
                pages.append((path, number, text))
        pdf.close()
    return pages


def oracle(data: Path, sample: int, seed: int, budget: float | None) -> dict[str, Any]:
    import pypdfium2 as pdfium

    from latemm.data.ingest import _render_for_ocr
    from latemm.data.ocr import OcrPool, default_engine, default_workers

    pdfs = sorted((data / "mmlongbench" / "pdfs").glob("*.pdf"))
    candidates = born_digital_pages(pdfs)
    chosen = random.Random(seed).sample(candidates, min(sample, len(candidates)))
    engine = default_engine()
    if engine is None:
        raise SystemExit("no OCR engine installed: pip install 'latemm[ocr]'")
    workers = default_workers()
    images = []
    for path, number, _ in chosen:
        pdf = pdfium.PdfDocument(str(path))
        _, png = _render_for_ocr(
            pdf[number], dpi=96.0, max_pixels=1024 * 1024, image_format="JPEG", images=False
        )
        pdf.close()
        images.append(png)
    start = time.perf_counter()
    pages: list[dict[str, Any]] = []
    with OcrPool(engine, workers=workers) as pool:
        futures = {pool.submit(png): i for i, png in enumerate(images) if png is not None}
        finished, _ = wait(futures, timeout=budget)
        seconds = time.perf_counter() - start
        for future in sorted(finished, key=lambda f: futures[f]):
            path, number, layer = chosen[futures[future]]
            result = future.result()
            text = result if isinstance(result, str) else result.text
            pages.append(
                {
                    "doc_id": f"{path.name}#p{number + 1}",
                    "cer": round(cer(text, layer), 4),
                    "word_recall": round(word_recall(text, layer), 4),
                    "confidence": None if isinstance(result, str) else result.confidence,
                    "layer_chars": len(layer),
                }
            )
            print(f"  {pages[-1]}", flush=True)
        for future in futures:
            future.cancel()
    cers = [float(p["cer"]) for p in pages]
    recalls = [float(p["word_recall"]) for p in pages]
    summary = {
        "engine": engine,
        "workers": workers,
        "born_digital_pages": len(candidates),
        "sample": sample,
        "read": len(pages),
        "budget_seconds": budget,
        "seed": seed,
        "cer_median": statistics.median(cers),
        "cer_p90": percentile(cers, 0.9),
        "word_recall_median": statistics.median(recalls),
        "word_recall_p10": percentile(recalls, 0.1),
        "ocr_seconds": round(seconds, 1),
        "pages_per_second": round(len(pages) / seconds, 4) if pages else None,
        "pages": pages,
    }
    print({k: v for k, v in summary.items() if k != "pages"})
    return summary


def _ingest(pdfs: list[Path], corpus: Path, ocr: str) -> dict[str, Any]:
    from latemm.data.ingest import ingest_pdfs

    start = time.perf_counter()
    report = ingest_pdfs(pdfs, corpus, images=False, progress=True, ocr=ocr)
    record = {
        "seconds": round(time.perf_counter() - start, 1),
        "pages": report.pages,
        "text_sources": report.text_sources,
        "ocr_pages": report.ocr_pages,
        "ocr_resumed": report.ocr_resumed,
        "ocr_pages_per_second": (
            round(report.ocr_pages / report.ocr_seconds, 4) if report.ocr_seconds else None
        ),
        "skipped": report.problems,
    }
    # kept beside the corpus, so a --reuse run reports the ingest's own figures
    corpus.with_suffix(".ingest.json").write_text(json.dumps(record))
    return record


def _retrieve(
    corpus: Path, work: Path, label: str, queries: Path, *, reuse: bool = False
) -> dict[str, Any]:
    """Index ``corpus`` with MiniLM and search ``queries``: timings, rejects and the run. With
    ``reuse``, an index and run already in ``work`` are read back (timings from
    ``retrieve-LABEL.json`` when it was written, else None)."""
    from index_store import Index
    from latemm.encoders.text import TextEncoder
    from latemm.index.pipeline import index_corpus
    from latemm.runs.jobs import search_file
    from latemm.runs.metrics import load_run

    index = work / f"idx-{label}"
    run = work / f"run-{label}.parquet"
    timings = work / f"retrieve-{label}.json"
    if reuse and run.is_file() and index.is_dir():
        done = json.loads(timings.read_text()) if timings.is_file() else {}
        return {
            "index_seconds": done.get("index_seconds"),
            "search_seconds": done.get("search_seconds"),
            "rejects": len(Index.open(index).rejects()),
            "run": load_run(run),
        }
    encoder = TextEncoder(minilm_path())
    for stale in (index, run):
        if stale.exists():
            import shutil

            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    start = time.perf_counter()
    index_corpus(corpus, index, encoder=encoder, progress=False)
    index_seconds = time.perf_counter() - start
    start = time.perf_counter()
    search_file(index, queries, run, encoder=encoder, k=10, progress=False)
    done = {
        "index_seconds": round(index_seconds, 1),
        "search_seconds": round(time.perf_counter() - start, 1),
        "rejects": len(Index.open(index).rejects()),
    }
    timings.write_text(json.dumps(done))
    return {**done, "run": load_run(run)}


def _from_corpus(corpus: Path, pages: int) -> dict[str, Any]:
    """An ingest's figures read back from the corpus it wrote (``--no-images`` keeps no row
    without text, so the pages without text are the ones missing); its timings are those the
    ingest recorded beside it, or not known."""
    recorded = corpus.with_suffix(".ingest.json")
    if recorded.is_file():
        return dict(json.loads(recorded.read_text()))
    sources = pq.read_table(corpus, columns=["text_source"]).column(0).to_pylist()
    return {
        "seconds": None,
        "pages": len(sources),
        "text_sources": dict(Counter(sources)),
        "ocr_pages": None,
        "ocr_resumed": None,
        "ocr_pages_per_second": None,
        "without_text": pages - len(sources),
        "skipped": [],
    }


def _page_ids(pdfs: list[Path]) -> list[str]:
    import pypdfium2 as pdfium

    ids = []
    for path in pdfs:
        pdf = pdfium.PdfDocument(str(path))
        ids += [f"{path.name}#p{i + 1}" for i in range(len(pdf))]
        pdf.close()
    return ids


def pages_to_ocr(path: Path) -> int:
    """Pages of a PDF that ``--ocr auto`` reads (text layer under 20 visible characters)."""
    import pypdfium2 as pdfium

    from latemm.data.ingest import NEARLY_EMPTY_CHARS

    pdf = pdfium.PdfDocument(str(path))
    try:
        return sum(
            len("".join(pdf[i].get_textpage().get_text_range().split())) < NEARLY_EMPTY_CHARS
            for i in range(len(pdf))
        )
    finally:
        pdf.close()


def main_job(data: Path, work: Path, max_ocr_pages: int | None, reuse: bool) -> dict[str, Any]:
    import pyarrow as pa

    from latemm.data.mmlongbench import questions
    from latemm.runs.metrics import compare, evaluate

    every = sorted((data / "mmlongbench" / "pdfs").glob("*.pdf"))
    ocr_pages = {p.name: pages_to_ocr(p) for p in every}
    pdfs = [p for p in every if max_ocr_pages is None or ocr_pages[p.name] <= max_ocr_pages]
    left_out = {p.name: ocr_pages[p.name] for p in every if p not in pdfs}
    work.mkdir(parents=True, exist_ok=True)
    ids, texts, qrels = questions(
        data / "mmlongbench" / "samples.json", pdfs={p.name for p in pdfs}
    )
    queries = work / "questions.parquet"
    pq.write_table(pa.table({"query_id": ids, "text": texts}), queries)

    tag = "" if max_ocr_pages is None else f"-max{max_ocr_pages}"
    before_corpus = work / f"corpus-never{tag}.parquet"
    after_corpus = work / f"corpus-ocr{tag}.parquet"
    page_ids = _page_ids(pdfs)
    if reuse and before_corpus.is_file() and after_corpus.is_file():
        before = _from_corpus(before_corpus, len(page_ids))
        after = _from_corpus(after_corpus, len(page_ids))
    else:
        before = _ingest(pdfs, before_corpus, "never")
        after = _ingest(pdfs, after_corpus, "auto")
    table = pq.read_table(after_corpus, columns=["doc_id", "text", "text_source"]).to_pylist()
    layer = {r["doc_id"] for r in table if r["text_source"] == "layer"}
    no_layer_q = [q for q in ids if not any(doc in layer for doc in qrels[q])]
    blank = sorted(set(page_ids) - {r["doc_id"] for r in table})  # OCR found nothing
    shown = [r for r in table if r["text_source"] == "ocr"][:3]

    runs, jobs = {}, {}
    for label, corpus, ingest in (
        ("before", before_corpus, before),
        ("after", after_corpus, after),
    ):
        done = _retrieve(corpus, work, label, queries, reuse=reuse)
        runs[label] = done.pop("run")
        jobs[label] = {
            # pages the ingest left out for want of text (--no-images keeps no textless row)
            "without_text": len(
                {m.group(0) for m in map(PAGE.match, ingest["skipped"]) if m is not None}
            ),
            **{k: v for k, v in ingest.items() if k != "skipped"},
            **done,
        }
        parts = (ingest["seconds"], done["index_seconds"], done["search_seconds"])
        jobs[label]["total_seconds"] = (
            round(sum(parts), 1) if all(x is not None for x in parts) else None
        )
    metrics = ["ndcg@5", "ndcg@10", "recall@10"]
    subset = {q: qrels[q] for q in no_layer_q}
    result = {
        "pdfs": len(pdfs),
        "left_out_pdfs": left_out,
        "pages_to_ocr": sum(ocr_pages[p.name] for p in pdfs),
        "questions": len(ids),
        "questions_without_layer_evidence": len(no_layer_q),
        "jobs": jobs,
        "truly_blank": blank,
        "ocr_text_examples": [{"doc_id": r["doc_id"], "text": r["text"][:300]} for r in shown],
        "all": {label: evaluate(run, qrels, metrics) for label, run in runs.items()},
        "no_layer_evidence": {
            label: evaluate({q: run.get(q, {}) for q in subset}, subset, metrics)
            for label, run in runs.items()
        },
        "paired_t_test_all": str(compare(runs, qrels, metrics)),
        "paired_t_test_no_layer_evidence": str(
            compare(
                {k: {q: r.get(q, {}) for q in subset} for k, r in runs.items()}, subset, metrics
            )
        ),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "truly_blank"}, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["oracle", "main", "all"], default="all")
    parser.add_argument("--sample", type=int, default=40, help="born-digital pages in the oracle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds the oracle's OCR may take; the pages read by then are scored, the rest "
        "left out (the JSON says how many)",
    )
    parser.add_argument(
        "--max-ocr-pages",
        type=int,
        default=None,
        help="main job over the PDFs with at most this many pages to OCR (default: every PDF)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="main job: read back the corpora, indexes and runs a previous run left in "
        "experiments/cache/eval_ocr/ (their timings only where they were recorded)",
    )
    parser.add_argument("--quick", action="store_true", help="an 8-page oracle, no main job")
    args = parser.parse_args(argv)
    data = shared_data_dir()
    parts: dict[str, Any] = {}
    command = "python -m experiments.eval_ocr " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.part in ("oracle", "all"):
        parts["oracle"] = oracle(data, 8 if args.quick else args.sample, args.seed, args.budget)
    if args.part in ("main", "all") and not args.quick:
        parts["main_job"] = main_job(data, CACHE / NAME, args.max_ocr_pages, args.reuse)
    # Each part keeps the command that produced it; the file is read again only now, so two
    # parts run side by side both end up in it.
    path = RESULTS / f"{NAME}.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    payload = {k: previous[k] for k in ("oracle", "main_job") if k in previous}
    payload.update({k: {**v, "command": command.strip()} for k, v in parts.items()})
    write_result(NAME, payload)


# ------------------------------------------------------------------------------ report
def render_section(r: dict[str, Any], sources: Sources) -> str:
    """Section 4c: OCR at ingest (experiments/eval_ocr.py): reading quality against the text
    layer, and the main job before and after."""
    out = [
        "## 4c. OCR at ingest: pages without a text layer (MMLongBench-Doc)",
        render.provenance(r),
        "",
    ]
    oracle = r.get("oracle")
    if oracle:
        out.append(
            f"**Oracle**: {oracle.get('read', oracle['sample'])} of {oracle['sample']} sampled "
            f"born-digital pages (of {oracle['born_digital_pages']}, seed {oracle['seed']}; those "
            f"read within the {oracle.get('budget_seconds') or 'unlimited'} s budget) read by {oracle['engine']} in {oracle['workers']} worker "
            f"processes and compared with their text layer (`{oracle['command']}`).\n"
        )
        rows = [
            ["character error rate", oracle["cer_median"], oracle["cer_p90"]],
            ["word recall", oracle["word_recall_median"], oracle["word_recall_p10"]],
            ["OCR pages/s", oracle["pages_per_second"], ""],
        ]
        out += [render.table(["", "median", "worst decile (p90 CER, p10 recall)"], rows), ""]
    job = r.get("main_job")
    if job:
        before, after = job["jobs"]["before"], job["jobs"]["after"]
        out.append(
            f"**Main job** (`ingest --no-images` -> `index --encoder MiniLM` -> `search`) over "
            f"{job['pdfs']} PDFs ({job['pages_to_ocr']} pages to OCR; left out, with their pages "
            f"to OCR: {', '.join(f'{k[:24]} ({v})' for k, v in job['left_out_pdfs'].items()) or 'none'}), "
            f"{job['questions']} answerable questions, {job['questions_without_layer_evidence']} "
            f"of them with every evidence page lacking a text layer (`{job['command']}`).\n"
        )
        # Left without text: before, every page without a text layer; after, the pages OCR
        # found empty (listed one by one in the JSON).
        without = {"before": before["without_text"], "after": len(job["truly_blank"])}
        rows = [
            [
                flag,
                without[label],
                job["all"][label]["ndcg@5"],
                job["no_layer_evidence"][label]["ndcg@5"],
                block["ocr_pages"],
                block["ocr_resumed"],
                block["ocr_pages_per_second"] or "",
                block["total_seconds"],
            ]
            for flag, label, block in (
                ("--ocr never", "before", before),
                ("--ocr auto (default)", "after", after),
            )
        ]
        out.append(
            render.table(
                [
                    "ingest",
                    "pages left without text",
                    "nDCG@5 all",
                    "nDCG@5 no-layer evidence",
                    "pages OCR read",
                    "OCR results resumed",
                    "OCR pages/s",
                    "job seconds",
                ],
                rows,
            )
        )
        out += ["", "Paired t-test (ranx), all answerable questions:", "", "```"]
        out += [job["paired_t_test_all"].strip(), "```", ""]
        out += ["Paired t-test, questions whose evidence has no text layer:", "", "```"]
        out += [job["paired_t_test_no_layer_evidence"].strip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
