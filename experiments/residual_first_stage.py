"""Which first stage a residual index needs: FDE shapes and fast-scan code sizes, judged by the
recall@10 left after rescoring with the residual codecs, without building an index per variant.

Run: ``python -m experiments.residual_first_stage [--specs R:k:p:m ...] [--centroids K]
[--synthetic-pages N]``. Writes ``results/residual_first_stage.json`` (``_k<K>`` with
``--centroids``).

A spec ``R:k:p:m`` is an FDE of R repetitions, k SimHash bits (2^k partitions), AMS projection to
p, empty partitions filled (``R * 2^k * p`` dimensions), coded by latemm's global fast-scan first
stage ``PQ<m>x4fs`` (m / 2 bytes per document; codebook trained on 4,096 sampled documents as on
commit). ``20:5:16:1280`` is the float16 default (640 B/doc).

- Vaswani MiniLM (real, 11,429 abstracts, 93 queries): each residual codec (res2, res4) is
  trained and applied to every token once (``index_store.codecs``: PLAID's centroid count unless
  ``--centroids``) and every document's decoded vectors scored exactly; for each spec and C, the
  recall@10 against the exact float32 MaxSim top-10 of the first stage's top C (``fs@C``) and of
  the top 10 after rescoring those C with the decoded vectors (``res2@C``, ``res4@C``: what a
  residual index's search returns with C candidates, 512 by default).
- ColPali-shaped synthetic pages (1,030 tokens x 128, ``--synthetic-pages``, 50 queries): the
  first stage's recall@C only (``fs@C``) and that of the exact float32 FDE inner product
  (``flat@C``): a check that a spec chosen on short abstracts does not lose long pages.

Recall values are deterministic (seeded); no timings are reported.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from experiments import render
from experiments.common import vaswani_minilm, write_result
from experiments.synthetic import SyntheticCorpus
from fde import FDEConfig, encode_documents, encode_queries
from index_store import codecs
from index_store.first_stage import GlobalFirstStage, encode_codes, train_codebook
from latemm.ranking.scoring import maxsim

SPECS = ("20:5:16:1280", "20:5:16:640", "20:4:16:640", "20:4:16:512", "20:3:16:320", "10:5:16:640")
DEPTHS = (256, 512, 768, 1024, 2048)
CODECS = ("res2", "res4")


def fde_config(spec: str, dim: int) -> tuple[FDEConfig, int]:
    reps, bits, proj, m = (int(x) for x in spec.split(":"))
    config = FDEConfig(
        dimension=dim,
        num_repetitions=reps,
        num_simhash_projections=bits,
        projection_type="ams_sketch",
        projection_dimension=proj,
        fill_empty_partitions=True,
    )
    return config, m


def first_stage_ranking(
    spec: str,
    vectors: np.ndarray,
    offsets: np.ndarray,
    queries: np.ndarray,
    q_offsets: np.ndarray,
    depth: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Q, depth) document rows the fast-scan first stage ranks first, and the FDEs."""
    config, m = fde_config(spec, vectors.shape[1])
    fde = np.ascontiguousarray(encode_documents(vectors, config, offsets=offsets), np.float32)
    query_fde = np.ascontiguousarray(encode_queries(queries, config, offsets=q_offsets), np.float32)
    sample = np.random.default_rng(0).choice(len(fde), min(4096, len(fde)), replace=False)
    codebook = train_codebook(f"PQ{m}x4fs", fde[np.sort(sample)])
    stage = GlobalFirstStage.assemble(codebook, [(0, encode_codes(codebook, fde))])
    _, rows, _ = stage.search(query_fde, min(depth, len(fde)))
    return rows, fde, query_fde


def _recall(tops: list[np.ndarray], exact_top: list[set[int]]) -> float:
    return float(
        np.mean([len(set(t.tolist()) & e) / 10 for t, e in zip(tops, exact_top, strict=True)])
    )


def vaswani(specs: list[str], centroids: int | None) -> dict[str, Any]:
    data = vaswani_minilm()
    vectors = data["doc_vectors"].astype(np.float32)
    offsets = data["doc_offsets"].astype(np.int64)
    queries = data["query_vectors"].astype(np.float32)
    q_offsets = data["query_offsets"].astype(np.int64)
    exact = maxsim(queries, q_offsets, vectors, offsets)  # (Q, D)
    exact_top = [set(np.argsort(-row, kind="stable")[:10].tolist()) for row in exact]
    decoded_scores, codec_rows = {}, {}
    saved = codecs.MIN_CENTROIDS, codecs.MAX_CENTROIDS
    if centroids is not None:
        codecs.MIN_CENTROIDS = codecs.MAX_CENTROIDS = centroids
    try:
        for dtype in CODECS:
            codebook = codecs.train(vectors, dtype)
            codes, errors = codecs.encode(vectors, dtype, codebook)
            decoded = codecs.decode(codes, errors, dtype, vectors.shape[1], codebook)
            scores = maxsim(queries, q_offsets, decoded, offsets)
            decoded_scores[dtype] = scores
            codec_rows[dtype] = {
                "centroids": codecs.residual_centroids(codebook, dtype),
                "codebook_bytes_per_doc": codebook.nbytes / len(exact[0]),
                "recall@10_codec_only": _recall(
                    [np.argsort(-r, kind="stable")[:10] for r in scores], exact_top
                ),
            }
            print(f"vaswani {dtype}: {codec_rows[dtype]}", flush=True)
    finally:
        codecs.MIN_CENTROIDS, codecs.MAX_CENTROIDS = saved
    rows = []
    for spec in specs:
        ranked, fde, _ = first_stage_ranking(
            spec, vectors, offsets, queries, q_offsets, max(DEPTHS)
        )
        row: dict[str, Any] = {
            "spec": spec,
            "fde_dimension": fde.shape[1],
            "code_bytes_per_doc": int(spec.split(":")[3]) // 2,
            "fde_codebook_bytes": 4 * 16 * fde.shape[1],
        }
        for c in DEPTHS:
            cands = ranked[:, :c]
            row[f"fs@{c}"] = _recall(list(cands), exact_top)
            for dtype, scores in decoded_scores.items():
                tops = []
                for q, cand in enumerate(cands):
                    cand = cand[cand >= 0]
                    tops.append(cand[np.argsort(-scores[q, cand], kind="stable")[:10]])
                row[f"{dtype}@{c}"] = _recall(tops, exact_top)
        print(f"vaswani {row}", flush=True)
        rows.append(row)
    return {
        "set": "vaswani-minilm",
        "documents": len(offsets) - 1,
        "codecs": codec_rows,
        "rows": rows,
    }


def synthetic(specs: list[str], pages: int) -> dict[str, Any]:
    corpus = SyntheticCorpus()
    vectors = corpus.pages(0, pages).reshape(-1, corpus.dim)
    offsets = np.arange(pages + 1, dtype=np.int64) * corpus.tokens_per_page
    q3, _ = corpus.queries(50, pages)
    queries = q3.reshape(-1, corpus.dim).astype(np.float32)
    q_offsets = np.arange(51, dtype=np.int64) * corpus.query_tokens
    exact = maxsim(queries, q_offsets, vectors, offsets)
    exact_top = [set(np.argsort(-row, kind="stable")[:10].tolist()) for row in exact]
    rows = []
    depths = [c for c in (64, 128, 256, 512, 1024) if c <= pages]
    for spec in specs:
        ranked, fde, query_fde = first_stage_ranking(
            spec, vectors, offsets, queries, q_offsets, max(depths)
        )
        flat = np.argsort(-(query_fde @ fde.T), axis=1, kind="stable")[:, : max(depths)]
        row: dict[str, Any] = {"spec": spec, "fde_dimension": fde.shape[1]}
        for c in depths:
            row[f"fs@{c}"] = _recall(list(ranked[:, :c]), exact_top)
            row[f"flat@{c}"] = _recall(list(flat[:, :c]), exact_top)
        print(f"synthetic {row}", flush=True)
        rows.append(row)
    return {"set": f"colpali-synthetic-{pages}", "documents": pages, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--specs", nargs="+", default=list(SPECS), help="R:k:p:m FDE and code")
    parser.add_argument("--centroids", type=int, default=None, help="residual centroids (fixed)")
    parser.add_argument("--synthetic-pages", type=int, default=3000, help="0: Vaswani only")
    args = parser.parse_args(argv)
    sets = [vaswani(args.specs, args.centroids)]
    if args.synthetic_pages:
        sets.append(synthetic(args.specs, args.synthetic_pages))
    name = "residual_first_stage" + (f"_k{args.centroids}" if args.centroids else "")
    print(f"wrote {write_result(name, {'sets': sets})}")


def table_residual_first_stage(r: dict[str, Any]) -> str:
    """Section 5d: FDE shapes and fast-scan codes for residual indexes (``R:k:p:m``), recall@10
    after rescoring C candidates with res2 / res4 (Vaswani) and the first stage's own recall@C
    (Vaswani and ColPali-shaped synthetic pages)."""
    out = []
    for block in r["sets"]:
        shown = ("128", "256", "512", "1024")
        depths = [k[3:] for k in block["rows"][0] if k.startswith("fs@") and k[3:] in shown]
        codecs = [c for c in ("res2", "res4") if f"{c}@{depths[0]}" in block["rows"][0]]
        header = ["R:k:p:m", "FDE dims", "code B/doc"] + [
            f"{what}@{c}" for c in depths for what in ("first stage", *codecs)
        ]
        rows = [
            [x["spec"], x["fde_dimension"], int(x["spec"].split(":")[3]) // 2]
            + [f"{x[f'{what}@{c}']:.3f}" for c in depths for what in ("fs", *codecs)]
            for x in block["rows"]
        ]
        out.append(
            f"{block['set']}: {block['documents']:,} documents.\n\n{render.table(header, rows)}"
        )
    return f"{render.provenance(r)}\n\n" + "\n\n".join(out)


if __name__ == "__main__":
    main()
