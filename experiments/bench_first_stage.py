"""The first stage: which FDE structure, and does its cost grow with the number of segments?

Run: ``python -m experiments.bench_first_stage [--sections quality,scale,segments]``. Writes
``results/bench_first_stage.json``.

- ``quality``: on MiniLM-embedded Vaswani (11,429 abstracts) and 3,000 ColPali-shaped synthetic
  pages, candidates needed for 90/95/99% of the exact MaxSim top-10 when the FDEs are searched
  exactly (float32) or product-quantised: ``PQ640x8`` (faiss ``IndexPQ``, 640 B/page) and the
  4-bit fast-scan codes (``PQ<m>x4fs``) that latemm's global first stage uses.
- ``scale``: the same at ``--pages`` ColPali-shaped pages (FDEs and exact MaxSim computed in one
  streaming pass, ``experiments.first_stage_data``), with ms/query one at a time and batched
  (``--threads`` faiss threads).
- ``timing``: ms/query of the global structure over 10k and 100k documents' codes, assembled
  from one block or from 512-document segments, with and without 2% deleted.
- ``segments``: a fixed corpus committed as 1, 10 or 100 segments into a real index, with the
  default global first stage and with ``--faiss Flat`` (today's per-segment layout), timing
  ``latemm.retrieval.retriever.first_stage`` in the same run; the ratio 100 / 1 segments is printed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments import render
from experiments.candidates import needed, recall_curve
from experiments.common import median_time, write_result
from index_store import Index
from index_store.first_stage import GlobalFirstStage, encode_codes, train_codebook

if TYPE_CHECKING:
    from latemm.retrieval.retriever import Candidates

K_MAX = 4096  # candidates searched to locate the exact top-10 in each ordering
RECALL_AT = (64, 128, 256, 512, 1024)


def _ranks(ids: np.ndarray, exact_top: np.ndarray) -> np.ndarray:
    """(Q, K) ranked ids and (Q, 10) exact top-10 -> (Q, 10) rank of each (K when absent)."""
    absent: int = ids.shape[1]
    out = np.full(exact_top.shape, absent, dtype=np.int64)
    for q in range(ids.shape[0]):
        where = {int(d): r for r, d in enumerate(ids[q]) if d >= 0}
        out[q] = [where.get(int(d), absent) for d in exact_top[q]]
    return out


def _chunks(fde: np.ndarray, size: int = 8192) -> Any:
    for start in range(0, len(fde), size):
        yield np.ascontiguousarray(fde[start : start + size], dtype=np.float32)


def _flat(fde: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexFlatIP(fde.shape[1])
    for block in _chunks(fde):
        index.add(block)
    return index


def _pq8(fde: np.ndarray, m: int) -> Any:
    import faiss

    index = faiss.IndexPQ(fde.shape[1], m, 8, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(len(fde), min(len(fde), 4096), replace=False)
    index.train(np.ascontiguousarray(fde[np.sort(sample)], dtype=np.float32))
    for block in _chunks(fde):
        index.add(block)
    return index


def _fast_scan(fde: np.ndarray, m: int) -> GlobalFirstStage:
    """latemm's global first stage over ``fde`` (one block), codebook trained as on commit."""
    sample = np.random.default_rng(0).choice(len(fde), min(len(fde), 4096), replace=False)
    codebook = train_codebook(f"PQ{m}x4fs", np.asarray(fde[np.sort(sample)], np.float32))
    codes = np.concatenate([encode_codes(codebook, block) for block in _chunks(fde)])
    return GlobalFirstStage.assemble(codebook, [(0, codes)])


def variants(dim: int) -> list[tuple[str, int, Callable[[np.ndarray], Any]]]:
    """(label, bytes per document, builder) of each first stage measured."""
    return [
        ("FDE float32 (Flat)", 4 * dim, _flat),
        (f"PQ{dim // 16}x8 (IndexPQ)", dim // 16, lambda f: _pq8(f, dim // 16)),
        (f"PQ{dim // 8}x4fs (global fast-scan)", dim // 16, lambda f: _fast_scan(f, dim // 8)),
        (f"PQ{dim // 16}x4fs (global fast-scan)", dim // 32, lambda f: _fast_scan(f, dim // 16)),
    ]


def _search(structure: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(structure, GlobalFirstStage):
        _, rows, scores = structure.search(queries, k)  # one block: rows are the ids
        return scores, rows
    return structure.search(queries, k)  # a faiss index: (scores, ids)


def _timings(structure: Any, query_fde: np.ndarray) -> tuple[float, float]:
    """(median s/query one at a time over up to 10 queries, s for the batch) at k = 512."""
    one = [
        median_time(partial(_search, structure, query_fde[q : q + 1], 512), repeats=3)
        for q in range(min(len(query_fde), 10))
    ]
    return float(np.median(one)), median_time(lambda: _search(structure, query_fde, 512), repeats=3)


def measure(
    name: str,
    fde: np.ndarray,
    query_fde: np.ndarray,
    exact: np.ndarray,
    *,
    threads: int,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Every variant on one data set: candidates needed, recall at C, ms/query."""
    import faiss

    faiss.omp_set_num_threads(threads)
    exact_top = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    n = len(fde)
    k_max = min(K_MAX, n)
    rows = []
    print(f"[{name}] {n} documents, {len(query_fde)} queries", flush=True)
    for label, nbytes, builder in variants(fde.shape[1]):
        if any(label.startswith(s) for s in skip):
            continue
        start = time.perf_counter()
        structure = builder(fde)
        if isinstance(structure, GlobalFirstStage):
            structure.index()
        build_s = time.perf_counter() - start
        _, ids = _search(structure, query_fde, k_max)
        curve = recall_curve(_ranks(ids, exact_top), k_max)
        one, batch = _timings(structure, query_fde)
        row = {
            "method": label,
            "bytes_per_document": nbytes,
            "build_s": build_s,
            "candidates_needed": needed(np.arange(1, k_max + 1), curve),
            "recall_at_c": {str(c): float(curve[c - 1]) for c in RECALL_AT if c <= k_max},
            "ms_per_query_one_at_a_time": 1000 * one,
            "queries_per_s_batch": len(query_fde) / batch,
        }
        rows.append(row)
        print(
            f"  {label}: needed {row['candidates_needed']}, "
            f"{row['ms_per_query_one_at_a_time']:.1f} ms/query, build {build_s:.0f} s",
            flush=True,
        )
        del structure
    return {"data": name, "documents": n, "queries": len(query_fde), "methods": rows}


def quality(threads: int, synthetic: bool = True) -> list[dict[str, Any]]:
    from experiments.common import vaswani_minilm
    from experiments.synthetic import SyntheticCorpus
    from fde import encode_documents, encode_queries
    from index_store import default_fde_config
    from latemm.ranking.scoring import maxsim

    out = []
    data = vaswani_minilm()
    sets = [
        (
            "vaswani-minilm",
            data["doc_vectors"].astype(np.float32),
            data["doc_offsets"],
            data["query_vectors"].astype(np.float32),
            data["query_offsets"],
        )
    ]
    corpus = SyntheticCorpus()
    pages = corpus.pages(0, 3000 if synthetic else 0).reshape(-1, corpus.dim)
    q3, _ = corpus.queries(50, 3000)
    sets += (
        []
        if not synthetic
        else [
            (
                "colpali-synthetic-3000",
                pages,
                np.arange(3001, dtype=np.int64) * corpus.tokens_per_page,
                q3.reshape(-1, corpus.dim),
                np.arange(51, dtype=np.int64) * corpus.query_tokens,
            )
        ]
    )
    for name, vectors, offsets, q_vectors, q_offsets in sets:
        config = default_fde_config(vectors.shape[1])
        fde = encode_documents(vectors, config, offsets=offsets)
        query_fde = encode_queries(q_vectors, config, offsets=q_offsets)
        exact = maxsim(q_vectors, q_offsets, vectors, offsets)
        # PQ640x8's 8-bit training takes minutes here; RESULTS.md section 6 has its figures.
        out.append(measure(name, fde, query_fde, exact, threads=threads, skip=("PQ640x8",)))
    return out


def scale(pages: int, queries: int, threads: int, device: str | None, workers: int) -> Any:
    from experiments.first_stage_data import load

    data = load(pages, queries, device=device, workers=workers)
    return measure(
        f"colpali-synthetic-{pages}",
        data["fde"],
        data["query_fde"],
        data["exact"],
        threads=threads,
        skip=("PQ640x8",),  # its 8-bit training takes minutes here; RESULTS.md section 6 has it
    )


def timing(sizes: tuple[int, ...], threads: int, dim: int = 10_240) -> list[dict[str, Any]]:
    """ms/query of the global fast-scan structure over ``sizes`` documents' codes (k = 512),
    assembled from one block and from blocks of 512 documents (one per commit of today's
    default --commit-every): the search cost is a property of the code array, so the codes are
    drawn at random under a codebook trained on random FDEs."""
    import faiss

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    codebook = train_codebook(f"PQ{dim // 8}x4fs", rng.standard_normal((1024, dim), np.float32))
    queries = rng.standard_normal((16, dim), np.float32)
    rows = []
    for n in sizes:
        codes = rng.integers(0, 256, (n, codebook.sa_code_size()), dtype=np.uint8)
        for block in (n, 512):
            blocks = [(i, codes[a : a + block]) for i, a in enumerate(range(0, n, block))]
            structure = GlobalFirstStage.assemble(codebook, blocks)
            start = time.perf_counter()
            structure.index()
            build_s = time.perf_counter() - start
            one, batch = _timings(structure, queries)
            deleted: list[np.ndarray | None] = [np.arange(len(c)) % 50 != 0 for _, c in blocks]
            masked = median_time(partial(structure.search, queries[:1], 512, deleted))  # 2% deleted
            rows.append(
                {
                    "documents": n,
                    "segments": len(blocks),
                    "assemble_s": build_s,
                    "ms_per_query_one_at_a_time": 1000 * one,
                    "ms_per_query_2pct_deleted": 1000 * masked,
                    "queries_per_s_batch": len(queries) / batch,
                }
            )
            print(f"  {rows[-1]}", flush=True)
            del structure
    return rows


def _segment_index(path: Path, vectors: np.ndarray, n_segments: int, factory: str) -> None:
    from index_store import IndexConfig, create

    n = len(vectors)
    config = IndexConfig(dim=vectors.shape[2], faiss_factory=factory)
    with create(path, config) as writer:
        for part in np.array_split(np.arange(n), n_segments):
            writer.add([f"d{i}" for i in part], list(vectors[part]))
            writer.commit()


def _one_at_a_time(
    index: Index, matrix: np.ndarray, allowed: list[np.ndarray | None], n_queries: int
) -> list[Candidates]:
    """latemm's first stage at 512 candidates for each of the first ``n_queries`` rows of the
    query matrix alone."""
    from latemm.retrieval.retriever import first_stage

    return [first_stage(index, matrix[q : q + 1], 512, allowed) for q in range(n_queries)]


def segments(n_docs: int, counts: tuple[int, ...], n_queries: int) -> dict[str, Any]:
    """First-stage ms/query for one corpus committed as 1, 10, 100 segments, both layouts."""
    from latemm.retrieval.retriever import first_stage, first_stage_queries

    rng = np.random.default_rng(0)
    dim, tokens = 128, 16  # the first stage sees FDEs only: short pages build fast
    vectors = rng.standard_normal((n_docs, tokens, dim)).astype(np.float32)
    queries = rng.standard_normal((n_queries * 8, dim)).astype(np.float32)
    q_offsets = np.arange(n_queries + 1, dtype=np.int64) * 8
    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench-first-stage-"))
    try:
        for factory, layout in (("auto", "global (default)"), ("Flat", "per segment (Flat)")):
            for count in counts:
                path = root / f"{factory}-{count}"
                start = time.perf_counter()
                _segment_index(path, vectors, count, factory)
                build_s = time.perf_counter() - start
                index = Index.open(path)
                matrix = first_stage_queries(index, queries, q_offsets)
                allowed: list[np.ndarray | None] = [None] * len(index.segments)
                first_stage(index, matrix[:1], 512, allowed)  # builds the structure
                one = median_time(
                    partial(_one_at_a_time, index, matrix, allowed, n_queries), repeats=3
                )
                row = {
                    "layout": layout,
                    "segments": len(index.segments),
                    "documents": n_docs,
                    "ms_per_query": 1000 * one / n_queries,
                    "build_s": build_s,
                    "disk_bytes_per_document": index.stats()["bytes_per_document"],
                }
                rows.append(row)
                print(
                    f"  {layout}, {row['segments']} segments: {row['ms_per_query']:.2f} ms/query",
                    flush=True,
                )
                shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = {}
    for layout in ("global (default)", "per segment (Flat)"):
        times = {r["segments"]: r["ms_per_query"] for r in rows if r["layout"] == layout}
        ratios[layout] = times[max(times)] / times[min(times)]
        print(f"  {layout}: {max(times)} / {min(times)} segments = {ratios[layout]:.2f}x")
    return {"rows": rows, "ratio_most_to_one_segment": ratios}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="quality,scale,timing,segments")
    parser.add_argument("--pages", type=int, default=100_000, help="scale: synthetic pages")
    parser.add_argument("--queries", type=int, default=20, help="scale: queries")
    parser.add_argument("--threads", type=int, default=2, help="faiss threads when timing")
    parser.add_argument("--device", default=None, help="scale: torch device for FDE + MaxSim")
    parser.add_argument("--workers", type=int, default=1, help="scale: page generators")
    parser.add_argument("--segment-docs", type=int, default=10_000)
    parser.add_argument("--no-synthetic-quality", action="store_true", help="quality: Vaswani only")
    parser.add_argument("--name", default="bench_first_stage")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    payload: dict[str, Any] = {}
    if "quality" in sections:
        payload["quality"] = quality(args.threads, synthetic=not args.no_synthetic_quality)
    if "scale" in sections:
        payload["scale"] = scale(args.pages, args.queries, args.threads, args.device, args.workers)
    if "timing" in sections:
        payload["timing"] = timing((10_000, 100_000), args.threads)
    if "segments" in sections:
        payload["segments"] = segments(args.segment_docs, (1, 10, 100), 20)
    write_result(args.name, payload)


def table_first_stage_segments(r: dict[str, Any]) -> str:
    """Section 6b: first-stage cost of the same documents committed as 1, 10 or 100 segments."""
    rows = [
        [
            x["layout"],
            x["segments"],
            f"{x['documents']:,}",
            f"{x['ms_per_query']:.2f}",
            f"{x['disk_bytes_per_document']:,.0f}",
        ]
        for x in r["segments"]["rows"]
    ]
    header = ["layout", "segments", "documents", "first-stage ms/query", "disk bytes/page"]
    return render.table(header, rows)


def table_first_stage_timing(r: dict[str, Any]) -> str:
    """Section 6b: the global fast-scan structure over 10k and 100k documents' codes."""
    rows = [
        [
            f"{x['documents']:,}",
            x["segments"],
            f"{x['ms_per_query_one_at_a_time']:.2f}",
            f"{x['ms_per_query_2pct_deleted']:.2f}",
            f"{x['queries_per_s_batch']:.0f}",
            f"{x['assemble_s']:.2f}",
        ]
        for x in r["timing"]
    ]
    header = ["documents", "segments", "ms/query (one at a time)", "ms/query, 2% deleted"]
    return render.table([*header, "queries/s (batch of 16)", "assemble s"], rows)


if __name__ == "__main__":
    main()
