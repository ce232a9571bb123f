"""Hostile input to named fields, fusion arguments, queries and codecs (issue #30's second
adversarial round): each case is refused before any work with one `latemm CMD: error:` line
naming the row, doc id, field or file and the fix (exit 2, no traceback), or gives the right
answer; nothing already committed is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import codecs
from latemm.cli import main
from latemm.ranking import scoring
from tests.helpers import DIM, VECTORS


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


# ------------------------------------------------------------------------------ fields builds
def test_bm25_field_refuses_null_and_duplicate_ids_before_committing(tmp_path, capsys) -> None:
    """B11: the BM25 path refuses what the vector path refuses, and before any field is built."""
    for case, ids, message in (
        ("null", ["a", None, "c", "b"], "row 1: 'doc_id' is null; every row needs an id"),
        ("dup", ["a", "b", "a", "c"], "rows 0 and 2: duplicate doc_id 'a'; ids must be unique"),
    ):
        path = corpus(tmp_path / f"{case}.parquet", ids=ids)
        idx = tmp_path / f"idx-{case}"
        err = fails(
            capsys, "index", path, "--index", idx, "--field", "bm25=bm25",
            "--field", "emb=embedding:embedding", "--quiet",
        )  # fmt: skip
        assert f"{path}, {message}" in err
        assert not (idx / "fields.json").exists()
        assert not (idx / "fields" / "bm25").exists() or not any(
            (idx / "fields" / "bm25").iterdir()
        )


def test_bm25_field_added_later_refuses_bad_ids_and_keeps_the_index(tmp_path, capsys) -> None:
    good, idx = corpus(tmp_path / "c.parquet"), tmp_path / "idx"
    assert run_cli(capsys, "index", good, "--index", idx, "--field", "emb=embedding:embedding",
                   "--quiet")[0] == 0  # fmt: skip
    before = (idx / "fields.json").read_text()
    bad = corpus(tmp_path / "bad.parquet", ids=["x", "y", None])
    err = fails(capsys, "index", bad, "--index", idx, "--field", "bm25=bm25", "--quiet")
    assert f"{bad}, row 2: 'doc_id' is null" in err
    assert (idx / "fields.json").read_text() == before


def test_field_named_twice_is_refused_before_any_work(tmp_path, capsys) -> None:
    """P1: --field a=bm25 --field a=embedding:embedding used to commit a, then fail."""
    path, idx = corpus(tmp_path / "c.parquet"), tmp_path / "idx"
    err = fails(
        capsys, "index", path, "--index", idx, "--field", "a=bm25",
        "--field", "a=embedding:embedding", "--quiet",
    )  # fmt: skip
    assert "field 'a' is given twice (--field a=...); name each field once per command" in err
    assert not (idx / "fields.json").exists()


def test_second_field_that_cannot_be_built_leaves_the_first_uncommitted(tmp_path, capsys) -> None:
    """P1: every field of one call is checked (kind, encoder, column) before any is built."""
    path, idx = corpus(tmp_path / "c.parquet"), tmp_path / "idx"
    assert run_cli(capsys, "index", path, "--index", idx, "--field", "emb=embedding:embedding",
                   "--quiet")[0] == 0  # fmt: skip
    before = (idx / "fields.json").read_text()
    err = fails(
        capsys, "index", path, "--index", idx, "--field", "bm25=bm25",
        "--field", "emb=bm25", "--quiet",
    )  # fmt: skip
    assert "field 'emb' is a multi field reading embedding; it cannot take a bm25 field" in err
    assert (idx / "fields.json").read_text() == before


def test_precomputed_field_cannot_switch_columns(tmp_path, capsys) -> None:
    """P2: a field built from `embedding` refuses vectors from another column."""
    path = corpus(tmp_path / "c.parquet", other=embeddings(30, seed=5))
    idx = tmp_path / "idx"
    assert run_cli(capsys, "index", path, "--index", idx, "--field", "emb=embedding:embedding",
                   "--quiet")[0] == 0  # fmt: skip
    before = (idx / "fields.json").read_text()
    err = fails(capsys, "index", path, "--index", idx, "--field", "emb=embedding:other", "--quiet")
    assert (
        "field 'emb' holds vectors from column 'embedding', not 'other': one field cannot mix "
        "two columns' vectors; give --field emb=embedding:embedding to add pages"
    ) in err
    assert (idx / "fields.json").read_text() == before


def test_index_without_field_reindexes_the_recorded_fields(tmp_path, capsys) -> None:
    """P3: `latemm index C --index FIELDS_IDX` adds C's pages to every recorded field."""
    first = corpus(tmp_path / "a.parquet", ids=[f"a{i}" for i in range(10)])
    more = corpus(tmp_path / "b.parquet", ids=[f"b{i}" for i in range(7)])
    idx = tmp_path / "idx"
    assert run_cli(capsys, "index", first, "--index", idx, "--field", "emb=embedding:embedding",
                   "--field", "bm25=bm25", "--quiet")[0] == 0  # fmt: skip
    code, out, _ = run_cli(capsys, "index", more, "--index", idx, "--quiet")
    assert code == 0
    assert "emb: 17 documents, bm25: 17 documents" in out
    err = fails(capsys, "index", more, "--index", idx, "--encoder", "some/model", "--quiet")
    assert "holds named fields; --encoder builds a one-field index. Leave --encoder out" in err


def test_field_build_errors_name_the_users_file_and_row(tmp_path, capsys) -> None:
    """P23: a bad vector in a fields build names the corpus and its row, not the field's
    filtered copy under fields/ (rows without vectors are left out of that copy)."""
    g = np.random.default_rng(1)
    rows = [g.standard_normal((3, DIM)).astype(np.float32).tolist() for _ in range(6)]
    rows[4] = np.ones((3, DIM + 1), np.float32).tolist()
    rows[1] = None
    path = tmp_path / "c.parquet"
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"d{i}" for i in range(6)],
                "text": ["alpha", None, "gamma", "", "epsilon", "zeta"],
                "emb": pa.array(rows, VECTORS),
            }
        ),
        path,
    )
    idx = tmp_path / "idx"
    err = fails(capsys, "index", path, "--index", idx, "--field", "e=embedding:emb", "--quiet")
    assert ".corpus-" not in err
    assert f"{path}, row 4, doc_id 'd4': embedding vectors have different dimensions" in err
    assert "(field 'e')" in err


def test_dictionary_encoded_doc_ids_are_accepted(tmp_path, capsys) -> None:
    """P24: a pandas categorical doc_id column (dictionary-encoded in Parquet)."""
    ids = pa.array([f"d{i}" for i in range(12)]).dictionary_encode()
    path = corpus(tmp_path / "c.parquet", ids=ids)
    assert pa.types.is_dictionary(pq.read_schema(path).field("doc_id").type)
    code, out, _ = run_cli(
        capsys, "index", path, "--index", tmp_path / "idx", "--field", "emb=embedding:embedding",
        "--field", "bm25=bm25", "--quiet",
    )  # fmt: skip
    assert code == 0, out
    assert "emb: 12 documents, bm25: 12 documents" in out
    assert run_cli(capsys, "index", path, "--index", tmp_path / "plain", "--quiet")[0] == 0
    run = tmp_path / "run.parquet"
    q = queries(tmp_path / "q.parquet")
    assert run_cli(capsys, "search", tmp_path / "idx", q, "--out", run, "--quiet")[0] == 0
    assert set(pq.read_table(run).column("doc_id").to_pylist()) <= {f"d{i}" for i in range(12)}


def test_bm25_field_over_texts_without_a_word_is_a_clear_error(tmp_path, capsys) -> None:
    """P25: no text has a token of 2+ letters: bm25s would fail on an empty vocabulary."""
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "text": ["a 1 !", "the of"]}), path)
    idx = tmp_path / "idx"
    err = fails(capsys, "index", path, "--index", idx, "--field", "bm25=bm25", "--quiet")
    assert f"{path}: bm25 field 'bm25': none of its 2 text(s) has a word BM25 can index" in err
    assert not (idx / "fields.json").exists()


# ------------------------------------------------------------------------------ fields.json
@pytest.fixture(scope="module")
def fields_index(tmp_path_factory) -> tuple[Path, Path]:
    """A two-field index (precomputed vectors and BM25) and a query file for it."""
    root = tmp_path_factory.mktemp("fields")
    path, idx = corpus(root / "c.parquet"), root / "idx"
    code = main(["index", str(path), "--index", str(idx), "--field", "emb=embedding:embedding",
                 "--field", "bm25=bm25", "--quiet"])  # fmt: skip
    assert code == 0
    return idx, queries(root / "q.parquet")


@pytest.mark.parametrize(
    "case, edit, message",
    [
        ("P29", lambda m: m.pop("fields"), 'fields.json has no "fields" list; the file is damaged'),
        (
            "P30",
            lambda m: m["fields"].append(dict(m["fields"][0])),
            "fields.json lists field 'emb' twice; the file is damaged",
        ),
    ],
)
def test_malformed_fields_json_is_damage(case, edit, message, fields_index, tmp_path, capsys):
    """P29/P30: verify reports the damage (exit 1), search gives one line (exit 2)."""
    idx = tmp_path / "idx"
    shutil.copytree(fields_index[0], idx)
    manifest = json.loads((idx / "fields.json").read_text())
    edit(manifest)
    (idx / "fields.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "verify", idx)
    assert code == 1, err
    assert message in err and "1 problem(s)" in err
    err = fails(capsys, "search", idx, fields_index[1], "--out", tmp_path / "run.parquet")
    assert message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ query rows
def test_query_row_without_content_names_its_query_id(fields_index, tmp_path, capsys) -> None:
    """P9: a query row without text or embedding is named by query_id, not doc_id."""
    index, _ = fields_index
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": ["s5", "s6"], "text": ["revenue", None]}), path)
    err = fails(capsys, "search", index, path, "--out", tmp_path / "run.parquet", "--fields",
                "bm25")  # fmt: skip
    assert f"{path}, row 1, query_id 's6': no text, image or embedding" in err
    assert "doc_id" not in err


def _with_bad_row(path: Path, id_name: str, n: int, bad: int) -> Path:
    g = np.random.default_rng(3)
    rows = [g.standard_normal((3, DIM)).astype(np.float32).tolist() for _ in range(n)]
    rows[bad] = np.ones((2, 7), np.float32).tolist()
    pq.write_table(
        pa.table(
            {id_name: [f"{id_name[0]}{i}" for i in range(n)], "embedding": pa.array(rows, VECTORS)}
        ),
        path,
    )
    return path


def test_dimension_mismatch_names_the_row_that_opens_a_batch(tmp_path, capsys) -> None:
    """P26: the bad row opens a batch (row 150, batch size 10): it is the one named, in index
    and in search, not the next row."""
    bad = _with_bad_row(tmp_path / "c.parquet", "doc_id", 200, 150)
    idx = tmp_path / "idx"
    err = fails(capsys, "index", bad, "--index", idx, "--batch-size", "10", "--quiet")
    assert (
        f"{bad}, row 150, doc_id 'd150': embedding vectors have different dimensions (7 vs 16)"
        in err
    )
    good = corpus(tmp_path / "good.parquet")
    assert run_cli(capsys, "index", good, "--index", idx, "--quiet")[0] == 0
    q = _with_bad_row(tmp_path / "q.parquet", "query_id", 200, 150)
    err = fails(capsys, "search", idx, q, "--out", tmp_path / "run.parquet", "--batch-size", "10",
                "--quiet")  # fmt: skip
    assert (
        f"{q}, row 150, query_id 'q150': embedding vectors have different dimensions (7 vs 16)"
        in err
    )


# ------------------------------------------------------------------------------ fusion flags
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--weights", "emb=1,emb=2"], "--weights 'emb=1,emb=2' weighs field 'emb' twice"),
        (["--fields", ""], "--fields '' names no field; give NAME[,NAME...] or leave --fields out"),
        (["--fields", " , "], "--fields ' , ' names no field"),
        (
            ["--normalization", "zscore", "--fusion", "rrf"],
            "--normalization zscore applies to --fusion weighted, not rrf",
        ),
        (
            ["--normalization", "minmax"],  # the default fusion, auto, ranks: it normalises nothing
            "--normalization minmax applies to --fusion weighted, not auto",
        ),
        (
            ["--rrf-k", "5", "--fusion", "weighted"],
            "--rrf-k applies to --fusion rrf and auto, not weighted",
        ),
        (
            ["--rrf-k", "100000000000000000000"],
            "--rrf-k 100000000000000000000 is too large: at most 1000000000",
        ),
    ],
)
def test_fusion_flags_that_cannot_apply_are_refused(flags, message, fields_index, tmp_path, capsys):
    """P5 and P7: duplicate weights, an empty --fields, --normalization with rrf, a huge
    --rrf-k: one line each, before any search."""
    index, q = fields_index
    out = tmp_path / "run.parquet"
    err = fails(capsys, "search", index, q, "--out", out, *flags)
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
@pytest.mark.parametrize("scale", ["1e39", "1e-300"])
def test_extreme_weights_rank_as_their_ratio(fusion, scale, fields_index, tmp_path, capsys):
    """P6: weights of 1e39 or 1e-300 in the ratio 2:1 rank as 2:1 does, with finite non-zero
    scores (they used to be inf or 0, ranked as ties)."""
    index, q = fields_index
    runs = {}
    for name, (a, b) in {"plain": ("2", "1"), "extreme": (f"2{scale[1:]}", scale)}.items():
        out = tmp_path / f"{name}.parquet"
        code, _, err = run_cli(capsys, "search", index, q, "--out", out, "--fusion", fusion,
                               "--weights", f"emb={a},bm25={b}", "--k", "10", "--quiet")  # fmt: skip
        assert code == 0, err
        runs[name] = pq.read_table(out)
    assert (
        runs["extreme"].column("doc_id").to_pylist() == runs["plain"].column("doc_id").to_pylist()
    )
    scores = np.array(runs["extreme"].column("score").to_pylist())
    assert np.isfinite(scores).all() and (scores > 0).any()
    np.testing.assert_allclose(
        scores, np.array(runs["plain"].column("score").to_pylist()) / 2, rtol=1e-5
    )


# ------------------------------------------------------------------------------ codecs
def test_float16_refuses_vectors_it_would_flush_to_zero(tmp_path, capsys) -> None:
    """P21: vectors of magnitude 1e-8 became zeros in float16 (every score 0, ranked by id);
    they are refused, naming the document, and float32 keeps them."""
    g = np.random.default_rng(4)
    docs = [g.standard_normal((3, DIM)).astype(np.float32) for _ in range(5)]
    docs[3] = docs[3] * np.float32(1e-8)
    path = tmp_path / "tiny.parquet"
    pq.write_table(
        pa.table({"doc_id": [f"t{i}" for i in range(5)],
                  "embedding": pa.array([d.tolist() for d in docs], VECTORS)}),
        path,
    )  # fmt: skip
    idx = tmp_path / "idx"
    err = fails(capsys, "index", path, "--index", idx, "--dtype", "float16", "--quiet")
    assert "doc_id 't3': vector 0 has no value larger than" in err
    assert "below float16's smallest normal value (6.1e-05)" in err
    assert not idx.exists() or not (idx / "manifest.json").exists()
    assert run_cli(capsys, "index", path, "--index", tmp_path / "f32", "--dtype", "float32",
                   "--quiet")[0] == 0  # fmt: skip


# ------------------------------------------------------------------------------ query length
def test_long_query_is_capped_at_the_encoders_max_query_tokens() -> None:
    """P10: a 100k-character query became 12,500 vectors (8-11 s); it is truncated to the
    encoder's documented maximum, with a warning, and scores as its first window."""
    import latemm
    from latemm.encoders.text import TextEncoder

    encoder = TextEncoder(latemm.minilm_path(), device="cpu")
    head = "revenue growth in the third quarter of the year"
    long = " ".join([head] * 2000)  # ~100k characters
    with pytest.warns(UserWarning, match=r"longer than 256 tokens, the encoder's maximum query"):
        capped = encoder.encode_queries([long, "short query"])
    assert encoder.max_query_tokens == 256
    lengths = np.diff(capped.offsets)
    assert lengths[0] <= encoder.max_query_tokens
    ids = encoder.tokenizer(long, truncation=True, max_length=256)["input_ids"]
    kept = encoder.tokenizer.decode(ids, skip_special_tokens=True)  # the window's text
    assert len(kept) < 1500
    want = encoder.encode_queries([kept])
    np.testing.assert_allclose(capped.vectors[: lengths[0]], want.vectors, atol=1e-4)


# ------------------------------------------------------------------------------ query columns
def test_two_precomputed_fields_are_searched_with_a_column_each(tmp_path, capsys) -> None:
    """P11: --query-column FIELD=COLUMN gives each precomputed field its query vectors; the
    result equals the Python API given the same vectors."""
    from latemm.retrieval.field_search import FieldRetriever

    path = corpus(tmp_path / "c.parquet", other=embeddings(30, seed=5, dim=8))
    idx = tmp_path / "idx"
    assert run_cli(capsys, "index", path, "--index", idx, "--field", "a=embedding:embedding",
                   "--field", "b=embedding:other", "--quiet")[0] == 0  # fmt: skip
    q = queries(tmp_path / "q.parquet", other_q=embeddings(3, seed=7, dim=8))
    out = tmp_path / "run.parquet"
    err = fails(capsys, "search", idx, q, "--out", out)
    assert "--query-column a=COLUMN" in err
    code, _, err = run_cli(capsys, "search", idx, q, "--out", out, "--query-column", "b=other_q",
                           "--k", "5", "--quiet")  # fmt: skip
    assert code == 0, err
    table = pq.read_table(q)
    vectors = {
        "a": [np.array(v, np.float32) for v in table.column("embedding").to_pylist()],
        "b": [np.array(v, np.float32) for v in table.column("other_q").to_pylist()],
    }
    want = FieldRetriever(idx).search(["revenue growth"] * 3, k=5, query_vectors=vectors)
    got = pq.read_table(out).to_pandas()
    for i in range(3):
        rows = got[got.query_id == f"q{i}"].sort_values("rank")
        assert rows.doc_id.tolist() == list(want.doc_ids[i])
        assert not rows.score_b.isna().all()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--query-column", "zz=other_q"], "--query-column zz=...: 'zz' is not a searched field"),
        (["--query-column", "b=nope"], "no 'nope' column"),
        (
            ["--query-column", "b=other_q", "--query-column", "b=embedding"],
            "--query-column names field 'b' twice",
        ),
    ],
)
def test_bad_query_columns_are_refused(flags, message, tmp_path, capsys) -> None:
    path = corpus(tmp_path / "c.parquet", other=embeddings(30, seed=5, dim=8))
    idx = tmp_path / "idx"
    assert run_cli(capsys, "index", path, "--index", idx, "--field", "a=embedding:embedding",
                   "--field", "b=embedding:other", "--quiet")[0] == 0  # fmt: skip
    q = queries(tmp_path / "q.parquet", other_q=embeddings(3, seed=7, dim=8))
    err = fails(capsys, "search", idx, q, "--out", tmp_path / "run.parquet", *flags)
    assert message in err


def test_search_resumes_only_with_the_same_query_columns(tmp_path, capsys) -> None:
    """A search stopped by a bad row keeps its finished batches; re-run with another
    --query-column it refuses them instead of mixing two columns' results."""
    path = corpus(tmp_path / "c.parquet", other=embeddings(30, seed=5, dim=8))
    idx = tmp_path / "idx"
    assert run_cli(capsys, "index", path, "--index", idx, "--field", "a=embedding:embedding",
                   "--field", "b=embedding:other", "--quiet")[0] == 0  # fmt: skip
    good = embeddings(3, seed=7, dim=8).to_pylist()
    q = queries(tmp_path / "q.parquet", other_q=pa.array(good, VECTORS),
                other_r=pa.array(good[:2] + [None], VECTORS))  # fmt: skip
    run = tmp_path / "run.parquet"
    args = ["search", idx, q, "--out", run, "--batch-size", "1", "--quiet"]
    err = fails(capsys, *args, "--query-column", "b=other_r")
    assert "row 2, query_id 'q2': embedding is null" in err
    record = json.loads((tmp_path / ".run.parquet.parts" / "search.json").read_text())
    assert record["query_columns"] == {"b": "other_r"}
    err = fails(capsys, *args, "--query-column", "b=other_q")
    assert "holds the finished batches of an interrupted search with other arguments" in err


def test_float16_refine_copy_refuses_vectors_it_would_flush_to_zero(tmp_path, capsys) -> None:
    """P21 for the refine copy: --refine float16 beside pq codes would also store zeros."""
    g = np.random.default_rng(4)
    docs = [g.standard_normal((3, DIM)).astype(np.float32) * np.float32(1e-8) for _ in range(3)]
    path = tmp_path / "tiny.parquet"
    pq.write_table(
        pa.table({"doc_id": ["t0", "t1", "t2"],
                  "embedding": pa.array([d.tolist() for d in docs], VECTORS)}),
        path,
    )  # fmt: skip
    err = fails(capsys, "index", path, "--index", tmp_path / "idx", "--dtype", "pq1",
                "--refine", "float16", "--quiet")  # fmt: skip
    assert "doc_id 't0': vector 0 has no value larger than" in err
    assert "keep the copy with --refine int8" in err
