"""The residual codecs (res1 / res2 / res4) against float16, int8, pq1 and pq2 on real vectors.

Run: ``python -m experiments.residual_codec [--docs N] [--dtypes ...] [--sets ...] [--pool F ...]
[--plaid] [--repeats R]``. Writes ``results/residual_codec.json`` (``_<N>docs`` with ``--docs``, ``_<set>`` with
``--sets``, ``_pool`` with ``--pool``, ``_plaid`` with ``--plaid``), rewritten after every row.

``float16-flat`` is ``--dtype float16 --faiss Flat``, issue 29's yardstick for bytes (every file,
the Flat first stage's float32 FDEs included). ``--pool F`` adds, for each dtype, an index of
the documents' tokens pooled by ``latemm.ranking.pooling.pool_tokens`` (Ward clustering, factor F),
judged against the exact top-10 over the unpooled vectors. ``--plaid`` runs fast-plaid (its own
virtual environment, ``experiments.plaid_baseline``; ``$LATEMM_PLAID_PYTHON``) at nbits 2 and 4
on the same vectors in the same run: its index folder's bytes and the recall@10 of its top-10
against the same exact top-10.

Sets: Vaswani abstracts embedded token by token with the packaged MiniLM (384-d, cached by
``experiments.common.vaswani_minilm``; 93 queries, TREC qrels) and the real ColBERTv2 vectors of
``colbertv2-nanofiqa`` (128-d, 35 documents, 5 queries). For each storage dtype a real index is
built through the API (one segment) and measured:

- bytes per token and per document of the whole index (every file the manifest lists, and the
  manifest), and of the token codes alone (``vectors.npy``, ``scales.npy``, ``codebook.npy``);
- recall@10 of the index's own search (default candidates) against the exact float32 MaxSim
  top-10, and of the codec alone (every document's decoded vectors scored exactly: what the
  codec loses, without the first stage);
- nDCG@10 against the qrels (ranx), where the set's qrels judge its documents.

``--sets mmlongbench`` (named only: it encodes minutes once, then is cached) measures the text
layers of MMLongBench-Doc's 46 PDFs as MiniLM token vectors (``experiments.codec_sets``).

Timings (``index_s``: building the index through the API; ``search_s_per_query``: one batch
search of every query, divided by the queries, the median of ``--repeats`` of them) are taken on a shared, loaded machine: compare
them only as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from experiments import render
from experiments.codec_sets import mmlongbench_set
from experiments.common import CACHE, load_npz_sets, shared_data_dir, vaswani_minilm, write_result
from experiments.plaid_baseline import run_fastplaid
from experiments.storage_quality import by_file
from fde.errors import LatemmError
from index_store import Index, IndexConfig, create, default_fde_config
from index_store.codecs import is_residual
from index_store.config import RESIDUAL_CODEBOOKS
from latemm.ranking.pooling import pool_tokens
from latemm.ranking.scoring import maxsim
from latemm.retrieval.retriever import Retriever
from latemm.runs.metrics import evaluate, load_qrels

DTYPES = ("float16", "int8", "pq1", "pq2", "res1", "res2", "res4")
FLAT = "float16-flat"  # --dtype float16 --faiss Flat
PLAID_BUILDS = [{"nbits": 2}, {"nbits": 4}]
SETS = ("vaswani", "colbert")
EXTRA_SETS = ("mmlongbench",)  # real, but only when named (--sets): encoding it takes minutes
CODE_FILES = ("vectors.npy", "scales.npy", "codebook.npy")
INDEX_CODEBOOK = "vectors-codebook-g"  # a residual index's one codebook (--residual-codebook index)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=None, help="first N Vaswani abstracts")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=(*DTYPES, FLAT))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS + EXTRA_SETS)
    parser.add_argument(
        "--pool", nargs="+", type=int, default=[], help="pool factors measured with each dtype"
    )
    parser.add_argument("--plaid", action="store_true", help="fast-plaid at nbits 2 and 4 too")
    parser.add_argument(
        "--pool-only", action="store_true", help="only the pooled indexes of --pool"
    )
    parser.add_argument(
        "--candidates",
        nargs="+",
        type=int,
        default=[],
        help="also search each index with these numbers of first-stage candidates",
    )
    parser.add_argument(
        "--residual-codebook",
        choices=RESIDUAL_CODEBOOKS,
        default="index",
        help="residual dtypes: one codebook per index (what latemm index creates) or per segment",
    )
    parser.add_argument(
        "--fde-simhash",
        type=int,
        default=None,
        help="the FDE's SimHash bits k (2^k partitions) instead of the dtype's default",
    )
    parser.add_argument(
        "--faiss",
        default="auto",
        help="the first stage's faiss factory for every dtype but float16-flat (default auto)",
    )
    parser.add_argument(
        "--name", default=None, help="results file name (default: from the options)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="batch searches timed per index (search_s_per_query is their median)",
    )
    args = parser.parse_args(argv)
    name = "residual_codec" + (f"_{args.docs}docs" if args.docs else "")
    if args.sets != list(SETS):
        name += "_" + "_".join(args.sets)
    name += ("_poolonly" if args.pool_only else "_pool") if args.pool else ""
    name += "_plaid" if args.plaid else ""
    name += "_candidates" if args.candidates else ""
    name += f"_x{args.repeats}" if args.repeats > 1 else ""
    name = args.name or name
    build = {
        "residual_codebook": args.residual_codebook,
        "fde_simhash": args.fde_simhash,
        "faiss": args.faiss,
    }
    results: list[dict[str, Any]] = []
    for set_name in args.sets:
        loaders = {"vaswani": lambda: vaswani_set(args.docs), "colbert": colbert_set}
        data = loaders.get(set_name, mmlongbench_set)()
        rows: list[dict[str, Any]] = []
        keys = ("set", "documents", "tokens", "dim", "record")
        results.append({k: data[k] for k in keys if k in data} | {"rows": rows})
        steps: list[Any] = [] if args.pool_only else [(d, 1) for d in args.dtypes]
        steps += ["plaid"] if args.plaid else []
        steps += [(d, f) for f in args.pool for d in args.dtypes if d != FLAT]
        for step in steps:
            if step == "plaid":
                rows.extend(measure_plaid(data))
            else:
                rows.append(
                    measure(
                        data,
                        step[0],
                        pool=step[1],
                        candidates=args.candidates,
                        repeats=args.repeats,
                        **build,
                    )
                )
            # Written after every row: a long run that is stopped keeps what it measured.
            path = write_result(
                name,
                {
                    "sets": results,
                    "timings": "shared machine, 2 cores, loaded: compare only within one run",
                },
            )
    print(f"wrote {path}")


def vaswani_set(n_docs: int | None) -> dict[str, Any]:
    data = vaswani_minilm()
    n = n_docs or len(data["doc_ids"])
    offsets = data["doc_offsets"][: n + 1].astype(np.int64)
    return {
        "set": "vaswani-minilm",
        "ids": [str(i) for i in data["doc_ids"][:n]],
        "vectors": data["doc_vectors"][: offsets[-1]].astype(np.float32),
        "offsets": offsets,
        "query_ids": [str(q) for q in data["query_ids"]],
        "query_vectors": data["query_vectors"].astype(np.float32),
        "query_offsets": data["query_offsets"].astype(np.int64),
        "qrels": load_qrels(shared_data_dir() / "vaswani" / "qrels"),
        "documents": n,
        "tokens": int(offsets[-1]),
        "dim": int(data["doc_vectors"].shape[1]),
    }


def colbert_set() -> dict[str, Any]:
    root = shared_data_dir() / "colbertv2-nanofiqa"
    ids, vectors, offsets = load_npz_sets(root / "documents.npz")
    q_ids, q_vectors, q_offsets = load_npz_sets(root / "queries.npz")
    qrels = json.loads((root / "qrels.json").read_text())
    return {
        "set": "colbertv2-nanofiqa",
        "ids": [str(i) for i in ids],
        "vectors": vectors,
        "offsets": offsets,
        "query_ids": [str(q) for q in q_ids],
        "query_vectors": q_vectors,
        "query_offsets": q_offsets,
        "qrels": {str(q): {str(d): int(r) for d, r in j.items()} for q, j in qrels.items()},
        "documents": len(ids),
        "tokens": int(offsets[-1]),
        "dim": int(vectors.shape[1]),
    }


def _recall(found: list[list[str]], exact: list[set[str]]) -> float:
    return float(np.mean([len(set(f[:10]) & e) / 10 for f, e in zip(found, exact, strict=True)]))


def exact_top10(data: dict[str, Any]) -> list[set[str]]:
    """Each query's exact float32 MaxSim top-10 over the set's (unpooled) vectors, computed once."""
    if "exact_top" not in data:
        ids = np.array(data["ids"])
        exact = maxsim(
            data["query_vectors"], data["query_offsets"], data["vectors"], data["offsets"]
        )
        data["exact_top"] = [set(ids[np.argsort(-row, kind="stable")[:10]]) for row in exact]
    top: list[set[str]] = data["exact_top"]
    return top


def _ndcg(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float | str:
    try:
        return float(evaluate(run, qrels, ["ndcg@10"])["ndcg@10"])
    except LatemmError as exc:  # qrels that judge none of these documents
        return f"n/a ({exc})"


def measure(
    data: dict[str, Any],
    dtype: str,
    *,
    pool: int = 1,
    candidates: list[int] | None = None,
    repeats: int = 1,
    residual_codebook: str = "index",
    fde_simhash: int | None = None,
    faiss: str = "auto",
) -> dict[str, Any]:
    q, q_off = data["query_vectors"], data["query_offsets"]
    exact_top = exact_top10(data)
    vectors, offsets = data["vectors"], data["offsets"]
    if pool > 1:
        vectors, offsets = pool_tokens(vectors, offsets, pool)
    storage, factory = ("float16", "Flat") if dtype == FLAT else (dtype, faiss)
    fde = default_fde_config(data["dim"], dtype=storage)
    if fde_simhash is not None and dtype != FLAT:
        fde = replace(fde, num_simhash_projections=fde_simhash)
    config = IndexConfig(
        dim=data["dim"],
        dtype=storage,
        fde=fde,
        faiss_factory=factory,
        residual_codebook=residual_codebook if is_residual(storage) else "segment",
    )
    path = CACHE / f"residual-codec-{data['set']}-{dtype}-pool{pool}"
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    with create(path, config) as writer:
        writer.add(data["ids"], vectors, offsets=offsets)
        writer.commit(final=True)  # as latemm index's last commit: trains the index codebook
    index_s = time.perf_counter() - start
    index = Index.open(path)
    files = by_file(path)
    total = sum(files.values())
    codes = sum(n for f, n in files.items() if f in CODE_FILES or f.startswith(INDEX_CODEBOOK))
    retriever = Retriever(index)
    retriever.search_embeddings(q[: q_off[1]], q_off[:2], k=100)  # warm-up
    runs = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = retriever.search_embeddings(q, q_off, k=100, query_ids=data["query_ids"])
        runs.append((time.perf_counter() - start) / (q_off.size - 1))
    search_s = float(np.median(runs))
    # The codec alone: every document's decoded vectors scored exactly.
    (segment,) = index.segments
    decoded = segment.decode(segment.vectors, segment.scales, np.float32)
    coded = maxsim(q, q_off, decoded, segment.offsets)
    coded_top = [list(segment.doc_ids[np.argsort(-row, kind="stable")[:10]]) for row in coded]
    ndcg = _ndcg(result.to_run(), data["qrels"])
    row = {
        "dtype": dtype,
        "pool_factor": pool,
        "vectors_stored": int(offsets[-1]),
        "stored_as": segment.dtype,
        "centroids": None
        if segment.codebook is None or segment.codebook.ndim != 2
        else int(segment.codebook.shape[0] - ((2 << int(dtype[3:])) - 1)),
        "faiss_factory": index.config.faiss_factory,
        "fde_dimension": index.config.faiss_dimension,
        "fde_simhash": index.config.fde_config.num_simhash_projections,
        "residual_codebook": index.config.residual_codebook,
        "bytes_per_token_all_files": total / data["tokens"],
        "bytes_per_doc_all_files": total / data["documents"],
        "bytes_per_token_codes": codes / data["tokens"],
        "bytes_by_file": files,
        "recall@10_search": _recall([list(r) for r in result.doc_ids], exact_top),
        "recall@10_codec_only": _recall(coded_top, exact_top),
        "ndcg@10": ndcg,
        "index_s": index_s,
        "encode_pages_per_s": data["documents"] / index_s,
        "search_s_per_query": search_s,
        "search_s_per_query_runs": runs,
        "by_candidates": {},
    }
    for c in candidates or []:
        start = time.perf_counter()
        more = retriever.search_embeddings(
            q, q_off, k=100, candidates=c, query_ids=data["query_ids"]
        )
        row["by_candidates"][str(c)] = {
            "search_s_per_query": (time.perf_counter() - start) / (q_off.size - 1),
            "recall@10_search": _recall([list(r) for r in more.doc_ids], exact_top),
            "ndcg@10": _ndcg(more.to_run(), data["qrels"]),
        }
        print(f"    {c} candidates: {row['by_candidates'][str(c)]}", flush=True)
    print(
        f"{data['set']:>20} {dtype:>12} pool {pool}: {row['bytes_per_token_all_files']:7.1f} B/token "
        f"({row['bytes_per_token_codes']:6.1f} codes), {row['bytes_per_doc_all_files'] / 1024:7.2f}"
        f" KiB/doc, recall@10 {row['recall@10_search']:.3f} (codec only "
        f"{row['recall@10_codec_only']:.3f}), nDCG@10 {ndcg if isinstance(ndcg, str) else f'{ndcg:.4f}'}",
        flush=True,
    )
    shutil.rmtree(path, ignore_errors=True)
    return row


def measure_plaid(data: dict[str, Any]) -> list[dict[str, Any]]:
    """fast-plaid at nbits 2 and 4 over the set's vectors (float16, as it takes them), in its own
    virtual environment: one row per build, or one row saying why it did not run."""
    exact_top = exact_top10(data)
    work = Path(CACHE) / f"plaid-{data['set']}"
    plaid = run_fastplaid(
        work,
        data["vectors"].astype(np.float16),
        data["offsets"],
        data["query_vectors"],
        data["query_offsets"],
        top_k=10,
        settings=[{}],
        builds=PLAID_BUILDS,
    )
    shutil.rmtree(work, ignore_errors=True)
    if plaid is None or "error" in plaid:
        why = "no fast-plaid environment" if plaid is None else plaid["error"]
        print(f"{data['set']:>20} fast-plaid: not run ({why[-300:]})", flush=True)
        return [{"dtype": "fast-plaid", "error": why}]
    rows = []
    ids = data["ids"]
    for build in plaid["builds"]:
        (run,) = build["runs"]
        found = [[ids[d] for d in top] for top in run["top"]]
        scores = {
            qid: {ids[d]: float(10 - r) for r, d in enumerate(top)}
            for qid, top in zip(data["query_ids"], run["top"], strict=True)
        }
        row = {
            "dtype": f"fast-plaid-nbits{build['create']['nbits']}",
            "pool_factor": 1,
            "bytes_per_token_all_files": build["index_bytes"] / data["tokens"],
            "bytes_per_doc_all_files": build["index_bytes"] / data["documents"],
            "recall@10_search": _recall(found, exact_top),
            "ndcg@10": _ndcg(scores, data["qrels"]),
            "index_s": build["build_s"],
            "encode_pages_per_s": data["documents"] / build["build_s"],
            "search_s_per_query": 1.0 / run["batch_queries_per_s"],
            "search_s_p50_single": run["latency_s_median"],
        }
        print(
            f"{data['set']:>20} {row['dtype']}: {row['bytes_per_doc_all_files'] / 1024:7.2f} KiB/doc,"
            f" recall@10 {row['recall@10_search']:.3f}, nDCG@10 {row['ndcg@10']}",
            flush=True,
        )
        rows.append(row)
    return rows


def table_residual_codec(r: dict[str, Any]) -> str:
    """Section 5d: every storage of ``experiments.residual_codec`` on each real set of the run, with
    fast-plaid: bytes every file counted (and as a fraction of float16 and of float16 --faiss
    Flat), recall@10 against exact float32 MaxSim, nDCG@10, and times (loaded machine: ratios
    only); runs that record it (``fde_dimension``) also show each index's first stage."""
    blocks = [_residual_codec_block(block) for block in r["sets"]]
    return f"{render.provenance(r)}\n\n" + "\n\n".join(blocks)


def _residual_codec_block(block: dict[str, Any]) -> str:
    rows = [x for x in block["rows"] if "error" not in x]
    size = {x["dtype"]: x["bytes_per_doc_all_files"] for x in rows if x.get("pool_factor") == 1}
    first_stage = any("fde_dimension" in x for x in rows)
    out = []
    for x in rows:
        b = x["bytes_per_doc_all_files"]
        ndcg = x["ndcg@10"]
        codec = x.get("recall@10_codec_only")
        out.append(
            [
                x["dtype"],
                x.get("pool_factor", 1),
                f"{b / 1024:.2f}",
                f"{x['bytes_per_token_all_files']:.1f}",
                f"1/{size['float16'] / b:.1f}" if "float16" in size else "-",
                f"1/{size['float16-flat'] / b:.1f}" if "float16-flat" in size else "-",
                f"{x['recall@10_search']:.3f}",
                "-" if codec is None else f"{codec:.3f}",
                f"{ndcg:.4f}" if isinstance(ndcg, float) else "-",
                f"{x['encode_pages_per_s']:.0f}" if "encode_pages_per_s" in x else "-",
                f"{x['search_s_per_query'] * 1e3:.1f}" if "search_s_per_query" in x else "-",
            ]
            + (
                [
                    f"{x['faiss_factory']}, {x['fde_dimension']}-d FDE"
                    if "fde_dimension" in x
                    else "-"
                ]
                if first_stage
                else []
            )
        )
    header = [
        "storage",
        "pool",
        "KiB/doc (every file)",
        "B/token",
        "of float16",
        "of float16 Flat",
        "recall@10",
        "recall@10 codec only",
        "nDCG@10",
        "build docs/s",
        "search ms/query",
    ] + (["first stage"] if first_stage else [])
    failed = [f"{x['dtype']}: {x['error'][:300]}" for x in block["rows"] if "error" in x]
    note = f"\n\nNot run: {'; '.join(failed)}" if failed else ""
    return (
        f"{block['set']}: {block['documents']:,} documents, "
        f"{block['tokens']:,} tokens of {block['dim']} dimensions.\n\n"
        f"{render.table(header, out)}{note}"
    )


def table_residual_candidates(r: dict[str, Any]) -> str:
    """Section 5d: the same indexes searched with more first-stage candidates (one run)."""
    (block,) = r["sets"]
    rows = [
        [
            x["dtype"],
            c,
            f"{x['bytes_per_doc_all_files'] / 1024:.2f}",
            f"{y['recall@10_search']:.3f}",
            f"{y['ndcg@10']:.4f}" if isinstance(y["ndcg@10"], float) else "-",
            f"{y['search_s_per_query'] * 1e3:.0f}",
        ]
        for x in block["rows"]
        for c, y in x.get("by_candidates", {}).items()
    ]
    header = ["storage", "candidates", "KiB/doc", "recall@10", "nDCG@10", "search ms/query"]
    return f"{render.provenance(r)}\n\n{render.table(header, rows)}"


if __name__ == "__main__":
    main()
