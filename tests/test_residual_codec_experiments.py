"""The issue-29 codec experiments' own parts at a tiny size: the tiered bit allocation, the
quantile bucket coder, the fast-plaid environment switch and the report's table."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from experiments import plaid_baseline
from experiments.residual_codec import table_residual_candidates, table_residual_codec
from experiments.residual_rotation import ALLOWED_BITS, bucket_code, tiered_bits


def test_tiered_bits_fill_the_budget_with_byte_tiers_and_favour_variance() -> None:
    variances = np.geomspace(1.0, 1e-3, 64)  # decreasing, as principal axes come
    bits = tiered_bits(variances, 2 * 64)
    assert bits.sum() >= 2 * 64 and bits.sum() <= 2 * 64 + 8
    assert set(bits.tolist()) <= set(ALLOWED_BITS.tolist())
    assert np.all(np.diff(bits) <= 0)  # more variance, never fewer bits
    assert bits[0] > bits[-1]


def test_bucket_code_error_shrinks_with_bits_and_stays_within_the_range() -> None:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((4000, 4)).astype(np.float32)
    values = rng.standard_normal((500, 4)).astype(np.float32)
    errors = []
    for b in (1, 2, 4, 8):
        decoded = bucket_code(train, values, np.full(4, b))
        assert decoded.min() >= train.min() and decoded.max() <= train.max()
        errors.append(float(((decoded - values) ** 2).mean()))
    assert errors == sorted(errors, reverse=True)
    # 0 bits: every value becomes the column's median.
    zero = bucket_code(train, values, np.zeros(4, dtype=np.int64))
    np.testing.assert_allclose(zero, np.broadcast_to(np.median(train, axis=0), values.shape))


def test_plaid_python_without_fast_plaid_is_reported_as_absent(monkeypatch) -> None:
    monkeypatch.setenv("LATEMM_PLAID_PYTHON", sys.executable)  # the project's: no fast_plaid
    try:
        import fast_plaid  # noqa: F401
    except ImportError:
        assert plaid_baseline.ensure_venv() is None
    else:  # pragma: no cover - fast-plaid is never in the project's environment
        assert plaid_baseline.ensure_venv() is not None


def test_residual_codec_table_gives_byte_fractions_and_names_what_did_not_run() -> None:
    def row(dtype: str, kib: float, recall: float, pool: int = 1) -> dict[str, object]:
        return {
            "dtype": dtype,
            "pool_factor": pool,
            "bytes_per_doc_all_files": kib * 1024,
            "bytes_per_token_all_files": kib * 1024 / 50,
            "recall@10_search": recall,
            "recall@10_codec_only": recall,
            "ndcg@10": 0.5,
            "encode_pages_per_s": 100.0,
            "search_s_per_query": 0.01,
        }

    record = {
        "command": "python -m experiments.residual_codec",
        "commit": "abc",
        "machine": {"cpu": "cpu", "cores": 2},
        "date": "today",
        "sets": [
            {
                "set": "toy",
                "documents": 10,
                "tokens": 500,
                "dim": 8,
                "rows": [
                    row("float16-flat", 60.0, 0.99),
                    row("float16", 30.0, 0.98),
                    row("res4", 10.0, 0.95),
                    row("res4", 5.0, 0.9, pool=2),
                    {"dtype": "fast-plaid", "error": "no fast-plaid environment"},
                ],
            }
        ],
    }
    table = table_residual_codec(record)
    assert "| res4 | 1 | 10.00 | 204.8 | 1/3.0 | 1/6.0 | 0.950 | 0.950 | 0.5000 | 100 | 10.0 |" in (
        table
    )
    assert "| res4 | 2 | 5.00 |" in table
    assert "Not run: fast-plaid: no fast-plaid environment" in table


def test_candidates_table_has_a_row_per_index_and_candidate_count() -> None:
    runs = {
        "512": {"search_s_per_query": 0.5, "recall@10_search": 0.94, "ndcg@10": 0.5},
        "1024": {"search_s_per_query": 0.7, "recall@10_search": 0.95, "ndcg@10": 0.501},
    }
    record = {
        "command": "c",
        "commit": "abc",
        "machine": {},
        "date": "d",
        "sets": [
            {"rows": [{"dtype": "res4", "bytes_per_doc_all_files": 2048.0, "by_candidates": runs}]}
        ],
    }
    table = table_residual_candidates(record)
    assert "| res4 | 512 | 2.00 | 0.940 | 0.5000 | 500 |" in table
    assert "| res4 | 1024 | 2.00 | 0.950 | 0.5010 | 700 |" in table


def test_residual_codec_table_renders_every_set_of_a_run_and_its_first_stage() -> None:
    def row(dtype: str, kib: float, recall: float, **extra: object) -> dict[str, object]:
        return {
            "dtype": dtype,
            "pool_factor": 1,
            "bytes_per_doc_all_files": kib * 1024,
            "bytes_per_token_all_files": kib * 1024 / 50,
            "recall@10_search": recall,
            "ndcg@10": 0.5,
        } | extra

    first = {"faiss_factory": "PQ640x4fs", "fde_dimension": 5120}
    record = {
        "command": "c",
        "commit": "abc",
        "machine": {},
        "date": "d",
        "sets": [
            {
                "set": name,
                "documents": 10,
                "tokens": 500,
                "dim": 8,
                "rows": [row("float16", 30.0, 0.98), row("res2", 5.0, 0.92, **first)],
            }
            for name in ("one", "two")
        ],
    }
    table = table_residual_codec(record)
    assert "one: 10 documents" in table and "two: 10 documents" in table
    assert table.count("| res2 | 1 | 5.00 |") == 2
    assert "| PQ640x4fs, 5120-d FDE |" in table and "| first stage |" in table


def test_residual_first_stage_table_shows_recall_by_candidates() -> None:
    from experiments.residual_first_stage import table_residual_first_stage

    depth = {f"{w}@{c}": 0.9 for c in (256, 512, 2048) for w in ("fs", "res2")}
    record = {
        "command": "c",
        "commit": "abc",
        "machine": {},
        "date": "d",
        "sets": [
            {
                "set": "toy",
                "documents": 5,
                "rows": [{"spec": "20:4:16:640", "fde_dimension": 5120} | depth],
            }
        ],
    }
    table = table_residual_first_stage(record)
    assert "| R:k:p:m | FDE dims | code B/doc | first stage@256 | res2@256 |" in table
    assert "| 20:4:16:640 | 5120 | 320 | 0.900 | 0.900 | 0.900 | 0.900 |" in table
    assert "@2048" not in table


@pytest.mark.slow  # two real builds with a trained first stage: ~50 s on a loaded 2-core machine
def test_residual_codec_measures_the_cli_build_and_its_first_stage(tmp_path, monkeypatch) -> None:
    """A tiny real run of ``measure``: the index is built as ``latemm index`` builds it (one
    codebook per index, trained at the last commit) and the row names its first stage and
    counts the index codebook file among the codes."""
    from experiments import residual_codec

    monkeypatch.setattr(residual_codec, "CACHE", tmp_path)
    rng = np.random.default_rng(3)
    n, tokens, dim = 1100, 3, 16
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, n * tokens)] + 0.1 * rng.standard_normal(
        (n * tokens, dim)
    ).astype(np.float32)
    queries = vectors[: 4 * tokens] + 0.05
    data = {
        "set": "toy",
        "ids": [f"d{i}" for i in range(n)],
        "vectors": vectors,
        "offsets": np.arange(n + 1, dtype=np.int64) * tokens,
        "query_ids": ["q0", "q1", "q2", "q3"],
        "query_vectors": queries,
        "query_offsets": np.arange(5, dtype=np.int64) * tokens,
        "qrels": {"q0": {"d0": 1}},
        "documents": n,
        "tokens": n * tokens,
        "dim": dim,
    }
    row = residual_codec.measure(data, "res2")
    assert row["residual_codebook"] == "index" and row["stored_as"] == "res2"
    assert row["faiss_factory"] == "PQ640x4fs" and row["fde_dimension"] == 5120
    assert row["bytes_by_file"]["fde-codes.npy"] == 128 + n * 320  # .npy header + codes
    assert any(f.startswith("vectors-codebook-g") for f in row["bytes_by_file"])
    codebook = next(v for f, v in row["bytes_by_file"].items() if f.startswith("vectors-codebook"))
    assert row["bytes_per_token_codes"] * n * tokens == pytest.approx(
        row["bytes_by_file"]["vectors.npy"] + row["bytes_by_file"]["scales.npy"] + codebook
    )
    old = residual_codec.measure(data, "res2", fde_simhash=5, faiss="PQ1280x4fs")
    assert old["fde_dimension"] == 10240 and old["bytes_by_file"]["fde-codes.npy"] == 128 + n * 640
    assert 0.0 <= row["recall@10_search"] <= 1.0


def test_residual_speed_alternates_the_searches_and_reports_ratios(tmp_path, monkeypatch) -> None:
    """``experiments.residual_speed`` on a tiny clustered set: every configuration is timed in
    every round, ratios are to float16's median, the depth is the one searched with, and the
    report renders the record."""
    from experiments import residual_speed
    from experiments.residual_speed import table_residual_speed

    monkeypatch.setattr(residual_speed, "CACHE", tmp_path)
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((40, 16)).astype(np.float32)
    lengths = rng.integers(4, 9, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    vectors = centres[rng.integers(0, 40, offsets[-1])] + 0.1 * rng.standard_normal(
        (offsets[-1], 16)
    ).astype(np.float32)
    queries = vectors[:12].copy()
    data = {
        "set": "tiny",
        "ids": [f"d{i}" for i in range(300)],
        "vectors": vectors,
        "offsets": offsets,
        "query_ids": ["q0", "q1", "q2"],
        "query_vectors": queries,
        "query_offsets": np.array([0, 4, 8, 12]),
        "qrels": {"q0": {"d0": 1}},
        "documents": 300,
        "tokens": int(offsets[-1]),
        "dim": 16,
    }
    block = residual_speed.measure_set(data, ["res4"], [8], [5], rounds=2)
    rows = block["by_k"]["5"]
    assert [r["config"] for r in rows] == ["float16", "res4", "res4 depth 8"]
    assert [r["refine_depth"] for r in rows] == [None, None, 8]
    assert all(len(r["search_s_per_query_runs"]) == 2 for r in rows)
    assert rows[0]["ratio_to_float16"] == 1.0
    assert all(0.0 <= r["recall@10"] <= 1.0 for r in rows)
    assert rows[1]["bytes_per_doc_all_files"] == rows[2]["bytes_per_doc_all_files"]
    table = table_residual_speed({"sets": [block], "command": "x", "commit": "c", "date": "d"})
    assert "res4 depth 8" in table and "1.00x" in table


def test_codebook_draw_takes_whole_pages_or_tokens_of_every_page(monkeypatch) -> None:
    """``experiments.codebook_draw``'s draws at a tiny size: ``pages`` is whole pages (each
    drawn page's vectors, none of another), ``tokens`` the pipeline's uniform token sample,
    ``first`` none (the build trains on its first vectors)."""
    import latemm.index.pipeline
    from experiments.codebook_draw import draw

    monkeypatch.setattr(latemm.index.pipeline, "CODEBOOK_SAMPLE_VECTORS", 1200)
    monkeypatch.setattr(latemm.index.pipeline, "INDEX_CODEBOOK_VECTORS", 1000)
    monkeypatch.setattr(latemm.index.pipeline.codecs, "MIN_TRAIN", 100)
    lengths = np.random.default_rng(0).integers(5, 40, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    vectors = np.zeros((offsets[-1], 2), np.float32)
    for page in range(300):
        vectors[offsets[page] : offsets[page + 1], 0] = page
        vectors[offsets[page] : offsets[page + 1], 1] = np.arange(lengths[page])
    data = {"vectors": vectors, "offsets": offsets, "ids": [f"p{i}" for i in range(300)]}
    pages = draw(data, "pages")
    assert pages is not None and len(pages) >= 1200 - 40
    drawn = np.unique(pages[:, 0]).astype(int)
    assert len(pages) == lengths[drawn].sum()  # whole pages, each once
    tokens = draw(data, "tokens")
    assert tokens is not None and len(tokens) == 1200
    assert len(np.unique(tokens[:, 0])) > len(drawn)  # from more pages than whole pages give
    assert draw(data, "first") is None
