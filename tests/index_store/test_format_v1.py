"""A committed format-version-1 index (written by latemm at commit 50894ce) still opens, searches
to the same ids and scores, and verifies clean: changes to the on-disk format are deliberate.

The index: dim 8, float16, a 32-dimensional FDE, Flat; two segments (d0-d3, then d4-d5), d1
deleted by a bitmap of generation 2. Regenerating it is never the fix for this test failing:
readers must keep reading version 1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from index_store import Index, verify
from latemm.retrieval.retriever import Retriever

V1 = Path(__file__).parent / "data" / "v1-index"
DIM = 8


def _queries() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(3)]


def test_v1_index_opens_searches_and_verifies(tmp_path) -> None:
    path = tmp_path / "v1"
    shutil.copytree(V1, path)  # the index may be written to (LOCK); the repository copy is not
    assert verify(path) == []
    index = Index.open(path, verify="full")
    assert index.manifest.format_version == 1
    assert sorted(index.doc_ids()) == ["d0", "d2", "d3", "d4", "d5"]
    assert index.get("d3").metadata == {"year": 2004, "text": "d"}
    result = Retriever(index).search_embeddings(_queries(), k=3)
    assert [list(r) for r in result.doc_ids] == [
        ["d2", "d3", "d0"],
        ["d4", "d2", "d0"],
        ["d4", "d0", "d5"],
    ]
    np.testing.assert_allclose(
        result.scores,
        [
            [8.73931884765625, 6.175416946411133, 2.31276798248291],
            [6.312099456787109, 6.278107643127441, 3.0797765254974365],
            [6.3528594970703125, 4.855123519897461, 3.4876937866210938],
        ],
        rtol=1e-6,
    )
