"""Hostile input to named fields, fusion arguments, queries and codecs (issue #30's second
adversarial round): each case is refused before any work with one `latemm CMD: error:` line
naming the row, doc id, field or file and the fix (exit 2, no traceback), or gives the right
answer; nothing already committed is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import codecs
from latemm import scoring
from latemm.cli import main

DIM = 16
VECTORS = pa.list_(pa.list_(pa.float32()))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def fails(capsys, *argv: str) -> str:
    """Run a command that must fail cleanly; return its error line(s)."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert f"\nlatemm {argv[0]}: error: " in "\n" + err, err
    return err


def embeddings(n: int, *, seed: int = 0, dim: int = DIM, tokens: int = 3) -> pa.Array:
    g = np.random.default_rng(seed)
    return pa.array(
        [g.standard_normal((tokens, dim)).astype(np.float32).tolist() for _ in range(n)], VECTORS
    )


def corpus(path: Path, n: int = 30, *, ids: list | None = None, **extra) -> Path:
    ids = ids if ids is not None else [f"d{i:03d}" for i in range(n)]
    words = "revenue profit growth market climate carbon energy solar policy budget".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(5)) for i in range(len(ids))]
    columns = {"doc_id": ids, "text": texts, "embedding": embeddings(len(ids)), **extra}
    pq.write_table(pa.table(columns), path)
    return path


def queries(path: Path, n: int = 3, *, dim: int = DIM, **extra) -> Path:
    columns = {
        "query_id": [f"q{i}" for i in range(n)],
        "text": ["revenue growth"] * n,
        "embedding": embeddings(n, seed=99, dim=dim),
        **extra,
    }
    pq.write_table(pa.table(columns), path)
    return path


# ------------------------------------------------------------------------------ B9: int8, d=1
@pytest.mark.parametrize("dim", [1, 2, 3, 4, 5, 8])
def test_int8_fast_pass_matches_float32_for_small_dimensions(dim, monkeypatch) -> None:
    """``torch._int_mm`` is wrong for one dimension: the int8 pass must still agree with a
    float32 brute force within its bound, in blocks and in place."""
    rng = np.random.default_rng(dim)
    pages = [rng.standard_normal((int(t), dim)).astype(np.float32) for t in (4, 1, 7, 4, 2)]
    query_sets = [rng.standard_normal((t, dim)).astype(np.float32) for t in (2, 5)]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pages])]).astype(np.int64)
    q_offsets = np.concatenate([[0], np.cumsum([len(q) for q in query_sets])]).astype(np.int64)
    q = np.concatenate(query_sets)
    codes, scales = codecs.encode(np.concatenate(pages), "int8")
    wide = codecs.decode(codes, scales, "int8", dim)
    exact = np.array(
        [
            [(qs @ wide[offsets[i] : offsets[i + 1]].T).max(axis=1).sum() for i in range(5)]
            for qs in query_sets
        ]
    )
    code_pages = [codes[offsets[i] : offsets[i + 1]] for i in range(5)]
    scale_pages = [scales[offsets[i] : offsets[i + 1]] for i in range(5)]
    for in_place_from in (1, 10**9):
        monkeypatch.setattr(scoring, "_INT8_IN_PLACE_TOKENS", in_place_from)
        fast, bound = scoring.maxsim_int8(q, q_offsets, code_pages, scale_pages)
        assert np.all(np.abs(fast - exact) <= bound + 1e-6), (dim, in_place_from, fast, exact)
        assert np.abs(fast - exact).max() < 1e-2


def test_int8_index_of_one_dimensional_vectors_ranks_as_float32(tmp_path, capsys) -> None:
    g = np.random.default_rng(0)
    docs = [g.standard_normal((4, 1)).astype(np.float32) for _ in range(50)]
    query = g.standard_normal((2, 1)).astype(np.float32)
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"x{i}" for i in range(50)],
                "embedding": pa.array([d.tolist() for d in docs], VECTORS),
            }
        ),
        tmp_path / "c.parquet",
    )
    pq.write_table(
        pa.table({"query_id": ["q0"], "embedding": pa.array([query.tolist()], VECTORS)}),
        tmp_path / "q.parquet",
    )
    exact = np.array([(query @ d.T).max(axis=1).sum() for d in docs])
    want = [f"x{i}" for i in np.argsort(-exact)[:3]]
    for dtype in ("float32", "int8"):
        idx, run = tmp_path / f"idx-{dtype}", tmp_path / f"run-{dtype}.parquet"
        assert (
            run_cli(
                capsys, "index", tmp_path / "c.parquet", "--index", idx, "--dtype", dtype, "--quiet"
            )[0]
            == 0
        )
        assert (
            run_cli(
                capsys,
                "search",
                idx,
                tmp_path / "q.parquet",
                "--out",
                run,
                "--k",
                "3",
                "--candidates",
                "50",
                "--quiet",
            )[0]
            == 0
        )
        got = pq.read_table(run)
        assert got.column("doc_id").to_pylist() == want, dtype
        np.testing.assert_allclose(
            got.column("score").to_pylist(), np.sort(exact)[::-1][:3], atol=0.05
        )
