"""The residual codecs (res1 / res2 / res4) against float16, int8, pq1 and pq2 on real vectors.

Run: ``python -m experiments.residual_codec [--docs N] [--dtypes ...] [--sets ...]``. Writes
``results/residual_codec.json`` (``_<N>docs`` with ``--docs``, ``_<set>`` with ``--sets``),
rewritten after every row.

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

Timings are not reported: the machine these ran on was shared and loaded (2 cores, load ~14).
"""

from __future__ import annotations

import argparse
import json
import shutil
from typing import Any

import numpy as np

from experiments.common import CACHE, load_npz_sets, shared_data_dir, vaswani_minilm, write_result
from experiments.storage_quality import by_file
from fde.errors import LatemmError
from index_store import Index, IndexConfig, create
from latemm.metrics import evaluate, load_qrels
from latemm.retriever import Retriever
from latemm.scoring import maxsim

DTYPES = ("float16", "int8", "pq1", "pq2", "res1", "res2", "res4")
SETS = ("vaswani", "colbert")
CODE_FILES = ("vectors.npy", "scales.npy", "codebook.npy")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=None, help="first N Vaswani abstracts")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    args = parser.parse_args(argv)
    name = "residual_codec" + (f"_{args.docs}docs" if args.docs else "")
    if args.sets != list(SETS):
        name += "_" + "_".join(args.sets)
    results: list[dict[str, Any]] = []
    for set_name in args.sets:
        data = vaswani_set(args.docs) if set_name == "vaswani" else colbert_set()
        rows: list[dict[str, Any]] = []
        results.append({k: data[k] for k in ("set", "documents", "tokens", "dim")} | {"rows": rows})
        for dtype in args.dtypes:
            rows.append(measure(data, dtype))
            # Written after every row: a long run that is stopped keeps what it measured.
            path = write_result(
                name,
                {
                    "sets": results,
                    "fast_plaid": "not run: `pip install fast-plaid` (1.7.0.2110) would replace "
                    "torch with 2.11.0 and add CUDA 13 wheels, which the house rules forbid",
                    "timings": "not reported: shared machine, 2 cores, load ~14",
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


def measure(data: dict[str, Any], dtype: str) -> dict[str, Any]:
    ids = np.array(data["ids"])
    q, q_off = data["query_vectors"], data["query_offsets"]
    exact = maxsim(q, q_off, data["vectors"], data["offsets"])  # (Q, D) float32 truth
    exact_top = [set(ids[np.argsort(-row, kind="stable")[:10]]) for row in exact]
    path = CACHE / f"residual-codec-{data['set']}-{dtype}"
    shutil.rmtree(path, ignore_errors=True)
    with create(path, IndexConfig(dim=data["dim"], dtype=dtype)) as writer:
        writer.add(data["ids"], data["vectors"], offsets=data["offsets"])
        writer.commit()
    index = Index.open(path)
    files = by_file(path)
    total, codes = sum(files.values()), sum(files.get(f, 0) for f in CODE_FILES)
    result = Retriever(index).search_embeddings(q, q_off, k=100, query_ids=data["query_ids"])
    # The codec alone: every document's decoded vectors scored exactly.
    (segment,) = index.segments
    decoded = segment.decode(segment.vectors, segment.scales, np.float32)
    coded = maxsim(q, q_off, decoded, segment.offsets)
    coded_top = [list(segment.doc_ids[np.argsort(-row, kind="stable")[:10]]) for row in coded]
    try:
        ndcg: float | str = evaluate(result.to_run(), data["qrels"], ["ndcg@10"])["ndcg@10"]
    except LatemmError as exc:  # qrels that judge none of these documents
        ndcg = f"n/a ({exc})"
    row = {
        "dtype": dtype,
        "stored_as": segment.dtype,
        "centroids": None
        if segment.codebook is None or segment.codebook.ndim != 2
        else int(segment.codebook.shape[0] - ((2 << int(dtype[3:])) - 1)),
        "bytes_per_token_all_files": total / data["tokens"],
        "bytes_per_doc_all_files": total / data["documents"],
        "bytes_per_token_codes": codes / data["tokens"],
        "bytes_by_file": files,
        "recall@10_search": _recall([list(r) for r in result.doc_ids], exact_top),
        "recall@10_codec_only": _recall(coded_top, exact_top),
        "ndcg@10": ndcg,
    }
    print(
        f"{data['set']:>20} {dtype:>7}: {row['bytes_per_token_all_files']:7.1f} B/token "
        f"({row['bytes_per_token_codes']:6.1f} codes), {row['bytes_per_doc_all_files'] / 1024:7.2f}"
        f" KiB/doc, recall@10 {row['recall@10_search']:.3f} (codec only "
        f"{row['recall@10_codec_only']:.3f}), nDCG@10 {ndcg if isinstance(ndcg, str) else f'{ndcg:.4f}'}",
        flush=True,
    )
    shutil.rmtree(path, ignore_errors=True)
    return row


if __name__ == "__main__":
    main()
