"""Indexes of each kind as today's code writes them, committed under ``tests/latemm/data/`` so
that later format changes are checked against them (``test_format_fixtures.py``): a
multi-field index (``fields.json``: two vector fields from precomputed vectors and a bm25
field), a sharded index (``shards.json``: 3 plain shards) and the multi-field index with an
unfinished delete (its ``journal.json`` left behind).

Regenerate (only when the fixtures are meant to change, never to make the test pass: readers
must keep reading what was committed) from the repository root::

    python -m tests.latemm.format_fixtures

It rewrites ``tests/latemm/data/{fields-index,sharded-index,fields-journal-index}`` and their
searches' ids and scores in ``tests/latemm/data/format_fixtures.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATA = Path(__file__).parent / "data"
EXPECTED = DATA / "format_fixtures.json"
DIM = 4
N = 30
K = 5
WORDS = "revenue margin profit asset equity cash debt growth risk audit".split()
QUERY_TEXTS = ["revenue growth", "cash debt", "audit risk"]
DELETED = ["p03", "p10", "p17"]
FIELDS = {"m": "embedding:emb_multi", "s": "single:embedding:emb_single", "b": "bm25"}
FUSIONS = ("rrf", "weighted")


def write_corpus(path: Path) -> Path:
    """``N`` pages: text (every 7th page has none), a multi-vector and a one-vector embedding
    column, and a ``year``."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 5)) if i % 7 else None for i in range(N)]
    multi = [rng.standard_normal((int(t), DIM)).astype(np.float32) for t in rng.integers(1, 5, N)]
    single = [rng.standard_normal((1, DIM)).astype(np.float32) for _ in range(N)]
    table = pa.table(
        {
            "doc_id": [f"p{i:02d}" for i in range(N)],
            "text": texts,
            "embedding": [m.tolist() for m in multi],
            "emb_multi": [m.tolist() for m in multi],
            "emb_single": [s.tolist() for s in single],
            "year": [2000 + i for i in range(N)],
        }
    )
    pq.write_table(table, path)
    return path


def query_vectors() -> dict[str, list[np.ndarray]]:
    """Field name -> one (T, DIM) array per query text (``m``: multi-vector, ``s``: one)."""
    rng = np.random.default_rng(1)
    multi = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in QUERY_TEXTS]
    single = [rng.standard_normal((1, DIM)).astype(np.float32) for _ in QUERY_TEXTS]
    return {"m": multi, "s": single}


def _rows(result: Any) -> dict[str, Any]:
    return {
        "doc_ids": [[d for d in row if d is not None] for row in result.doc_ids.tolist()],
        "scores": [[float(s) for s in row if s == s] for row in result.scores.tolist()],
    }


def search_fields(path: Path) -> dict[str, Any]:
    """Each fusion's top ``K`` of the three queries, ids and final scores."""
    from latemm.retrieval.field_search import FieldRetriever

    out = {}
    for fusion in FUSIONS:
        retriever = FieldRetriever(path, fusion=fusion)
        result = retriever.search(QUERY_TEXTS, k=K, query_vectors=query_vectors())
        out[fusion] = _rows(result)
    return out


def search_sharded(path: Path) -> dict[str, Any]:
    """The merged top ``K`` of the multi-vector queries over every shard."""
    from latemm.retrieval.field_search import OneFieldRetriever

    return _rows(OneFieldRetriever(path).search_embeddings(query_vectors()["m"], k=K))


def _small_fde(dim: int) -> Any:
    from fde import FDEConfig

    return FDEConfig(dimension=dim, num_repetitions=2, num_simhash_projections=2, seed=3)


def build(out: Path) -> dict[str, Any]:
    """Write the three indexes under ``out`` and return their expected searches."""
    from unittest import mock

    from latemm.index.field_maintenance import begin_delete
    from latemm.index.fields import index_fields
    from latemm.index.sharded import index_sharded

    # A 32-dimensional FDE (2 repetitions x 4 partitions x 4) instead of the default 10,240, so
    # the committed files stay a few KB; it is recorded in each manifest like any other config.
    small_fde = mock.patch("latemm.index.pipeline.default_fde_config", _small_fde)
    with tempfile.TemporaryDirectory() as tmp, small_fde:
        corpus = write_corpus(Path(tmp) / "corpus.parquet")
        fields = out / "fields-index"
        index_fields(corpus, fields, FIELDS, dtype="float16", faiss_factory="Flat", progress=False)
        sharded = out / "sharded-index"
        index_sharded(
            corpus, sharded, num_shards=3, dtype="float16", faiss_factory="Flat", progress=False
        )
    journal = out / "fields-journal-index"
    shutil.copytree(fields, journal)
    begin_delete(journal, DELETED)  # the delete's first step only: its journal is left behind
    for path in (fields, sharded, journal):
        for lock in path.rglob("LOCK"):
            lock.unlink()
    return {
        "fields-index": search_fields(fields),
        "sharded-index": search_sharded(sharded),
        "fields-journal-index": search_fields(journal),
    }


def main() -> int:
    for name in ("fields-index", "sharded-index", "fields-journal-index"):
        shutil.rmtree(DATA / name, ignore_errors=True)
    DATA.mkdir(parents=True, exist_ok=True)
    expected = build(DATA)
    EXPECTED.write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {', '.join(expected)} and {EXPECTED.name} under {DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
