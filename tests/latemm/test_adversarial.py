"""Hostile input from the outside, through the CLI: every bad file, argument or filter gets a
`latemm CMD: error:` line naming what is wrong (exit 2, no traceback) or the right answer, and a
failed run loses nothing already committed.

One small index (precomputed embeddings, no model) is built once per session; tests that write
into it work on a copy. Index-directory corruption is tested in
tests/index_store/test_adversarial_index.py.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index, verify
from index_store.errors import InputError
from latemm.cli import main
from tests.helpers import SMALL_DIM as DIM

N_DOCS = 50
SCRIPT = "<script>alert(1)</script>"


def vectors(seed: int, n: int = 3) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32).tolist()


@dataclass(frozen=True)
class Base:
    root: Path
    corpus: Path
    queries: Path
    index: Path
    run: Path
    ids: list[str]


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Base:
    root = tmp_path_factory.mktemp("adversarial")
    ids = [f"doc-{i}" for i in range(N_DOCS)]
    corpus, queries = root / "corpus.parquet", root / "queries.parquet"
    pq.write_table(
        pa.table(
            {
                "doc_id": ids,
                "embedding": [vectors(i) for i in range(N_DOCS)],
                "text": [SCRIPT if i == 0 else f"page {i}" for i in range(N_DOCS)],
                "source": ["esg" if i % 3 == 0 else "news" for i in range(N_DOCS)],
                "year": [2010 + i % 15 for i in range(N_DOCS)],
                "title": [f"<b onmouseover=x>{i}</b>" for i in range(N_DOCS)],
            }
        ),
        corpus,
    )
    pq.write_table(
        pa.table(
            {"query_id": ["q0", "q1", "q2"], "embedding": [vectors(100 + i, 2) for i in range(3)]}
        ),
        queries,
    )
    index, run = root / "idx", root / "run.parquet"
    assert main(["index", str(corpus), "--index", str(index), "--quiet"]) == 0
    assert main(["search", str(index), str(queries), "--out", str(run), "--quiet"]) == 0
    return Base(root, corpus, queries, index, run, ids)


@pytest.fixture
def idx(base, tmp_path) -> Path:
    """A private copy of the shared index, for tests that write."""
    copy = tmp_path / "idx"
    shutil.copytree(base.index, copy)
    return copy


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def fails(capsys, *argv: str) -> str:
    """Run a command that must fail cleanly; return its error line(s)."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert f"\nlatemm {argv[0]}: error: " in "\n" + err, err  # after any progress bar
    return err


def intact(index: Path, ids: list[str]) -> None:
    assert verify(index) == []
    assert sorted(Index.open(index).doc_ids()) == sorted(ids)


def table(ids, embeddings, **columns) -> pa.Table:
    return pa.table({"doc_id": ids, "embedding": embeddings, **columns})


# ------------------------------------------------------------------------------ corpus files
def _write(case: str, path: Path) -> None:
    """Write the bad corpus of ``case`` at ``path``."""
    good = vectors(1)
    if case == "empty_file":
        path.write_bytes(b"")
    elif case == "truncated":
        pq.write_table(table(["n0"], [good]), path)
        path.write_bytes(path.read_bytes()[:-40])
    elif case == "not_parquet":
        path.write_text("doc_id,text\nn0,hello\n")
    elif case == "zero_rows":
        pq.write_table(table(["n0"], [good]).slice(0, 0), path)
    elif case == "float_ids":
        pq.write_table(pa.table({"doc_id": [1.5], "embedding": [good]}), path)
    elif case == "flat_embedding":
        pq.write_table(table(["n0"], [[1.0] * DIM]), path)
    elif case == "int_values":
        pq.write_table(table(["n0"], [[[1] * DIM]]), path)
    else:
        rows = {
            "nan": [good, [[float("nan")] * DIM]],
            "inf": [good, [[1.0] * (DIM - 1) + [float("inf")]]],
            "ragged": [good, [[1.0] * DIM, [1.0] * (DIM - 1)]],
            "no_vectors": [good, []],
            "zero_dim": [[[], []], [[]]],
            "null_vector": [good, [[1.0] * DIM, None]],
            "null_value": [good, [[1.0] * (DIM - 1) + [None]]],
            "null_embedding": [good, None],
            "wrong_dim": [[[1.0] * 5], [[1.0] * 5]],
            "float16_overflow": [good, [[70000.0] + [1.0] * (DIM - 1)]],
        }[case]
        pq.write_table(table(["n0", "n1"], rows), path)


CORPUS_CASES = {
    "empty_file": "empty_file.parquet is not a readable Parquet file",
    "truncated": "truncated.parquet is not a readable Parquet file",
    "not_parquet": "not_parquet.parquet is not a readable Parquet file",
    "zero_rows": "zero_rows.parquet has no rows",
    "float_ids": "column 'doc_id' has type double; expected string or integer ids",
    "flat_embedding": "expected a list of lists of floats (T x d)",
    "int_values": "embedding values have type int64; expected floats",
    "nan": "row 1, doc_id 'n1': embedding contains NaN or inf",
    "inf": "row 1, doc_id 'n1': embedding contains NaN or inf",
    "ragged": "row 1, doc_id 'n1': embedding vectors have different dimensions (7 vs 8)",
    "no_vectors": "row 1, doc_id 'n1': embedding has no vectors",
    "zero_dim": "row 0, doc_id 'n0': embedding vectors have dimension 0",
    "null_vector": "row 1, doc_id 'n1': embedding vector 1 is null",
    "null_value": "row 1, doc_id 'n1': embedding has a null value",
    "null_embedding": "row 1, doc_id 'n1': embedding is null",
    "wrong_dim": "vectors have dimension 5, the index",
    "float16_overflow": (
        "(rows from 0), doc_id 'n1': a vector value exceeds 65504, the largest float16 value; "
        "index with --dtype float32"
    ),
}


@pytest.mark.parametrize("case", sorted(CORPUS_CASES))
def test_bad_corpus_files_keep_the_index(case, base, idx, tmp_path, capsys) -> None:
    path = tmp_path / f"{case}.parquet"
    _write(case, path)
    err = fails(capsys, "index", path, "--index", idx, "--quiet")
    assert CORPUS_CASES[case] in err
    intact(idx, base.ids)


def test_float16_overflow_is_fine_in_float32(tmp_path, capsys) -> None:
    path = tmp_path / "big.parquet"
    _write("float16_overflow", path)
    code, _, _ = run_cli(capsys, "index", path, "--index", tmp_path / "i", "--dtype", "float32")
    assert code == 0 and len(Index.open(tmp_path / "i")) == 2


CORPUS_ARG_CASES = {
    "reserved_row": (["--quiet"], {"_row": [1]}, "column '_row' has a reserved name"),
    "reserved_segment": (["--quiet"], {"_segment": [1]}, "column '_segment' has a reserved name"),
    "id_collision": (
        ["--id-column", "key"],
        {"key": ["k0"]},
        "--id-column 'key' would be renamed to 'doc_id', but the file already has a 'doc_id'",
    ),
    "batch_size_0": (["--batch-size", "0"], {}, "--batch-size must be a positive integer, got 0"),
    "duplicate_ids": (["--quiet"], None, "rows 0 and 1: duplicate doc_id 'n0'"),
}


@pytest.mark.parametrize("case", sorted(CORPUS_ARG_CASES))
def test_bad_corpus_columns_and_arguments(case, base, idx, tmp_path, capsys) -> None:
    flags, extra, message = CORPUS_ARG_CASES[case]
    path = tmp_path / "c.parquet"
    if extra is None:
        pq.write_table(table(["n0", "n0"], [vectors(1), vectors(2)]), path)
    else:
        pq.write_table(table(["n0"], [vectors(1)], **{k: v for k, v in extra.items()}), path)
    assert message in fails(capsys, "index", path, "--index", idx, *flags)
    intact(idx, base.ids)


def test_corpus_folder_unifies_columns_and_names_bad_files(base, idx, tmp_path, capsys) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(table(["a0"], [vectors(1)], source=["esg"]), folder / "a.parquet")
    pq.write_table(table(["b0"], [vectors(2)], lang=["fr"]), folder / "b.parquet")
    code, _, err = run_cli(capsys, "index", folder, "--index", idx, "--quiet")
    assert code == 0, err
    index = Index.open(idx)
    assert index.get("b0").metadata["lang"] == "fr"  # not lost because a.parquet lacks it
    assert index.get("a0").metadata["lang"] is None
    # a file of another type in the folder, and a column whose type differs between files
    (folder / "notes.txt").write_text("hello")
    err = fails(capsys, "index", folder, "--index", idx, "--quiet")
    assert f"{folder / 'notes.txt'} (in {folder}) is not a readable Parquet file" in err
    assert "move it out of the folder" in err
    (folder / "notes.txt").unlink()
    pq.write_table(table(["c0"], [vectors(3)], lang=[3]), folder / "c.parquet")
    err = fails(capsys, "index", folder, "--index", idx, "--quiet")
    assert f"{folder / 'c.parquet'}: column 'lang' has type int64, but" in err
    shutil.rmtree(folder)
    folder.mkdir()
    assert "is an empty folder: no Parquet files" in fails(capsys, "index", folder, "--index", idx)
    intact(idx, [*base.ids, "a0", "b0"])


def test_long_path_like_and_script_ids_are_kept_safely(idx, tmp_path, capsys, monkeypatch) -> None:
    long_id, path_id, script_id = "x" * 20_000, "../../outside/evil", SCRIPT
    path = tmp_path / "odd.parquet"
    pq.write_table(table([long_id, path_id, script_id], [vectors(i) for i in (7, 8, 9)]), path)
    assert run_cli(capsys, "index", path, "--index", idx, "--quiet")[0] == 0
    index = Index.open(idx)
    assert {long_id, path_id, script_id} <= set(index.doc_ids())
    assert not (tmp_path.parent / "outside").exists()
    queries = tmp_path / "q.parquet"
    pq.write_table(
        pa.table({"query_id": ["../q/evil"], "embedding": [vectors(8, 3)]}), queries
    )  # the same vectors as path_id: it must come first
    run = tmp_path / "run.parquet"
    assert run_cli(capsys, "search", idx, queries, "--out", run, "--k", "100")[0] == 0
    assert pq.read_table(run).column("doc_id")[0].as_py() == path_id
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "show", run, "--index", idx, "--query", "../q/evil", "--k", "60")
    assert code == 0 and "wrote run-_q_evil.html" in out
    page = (tmp_path / "run-_q_evil.html").read_text()
    assert SCRIPT not in page and html_escaped(SCRIPT) in page


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


# ----------------------------------------------------------------------------- query files
def _queries(path: Path, ids: list[str], embeddings: list) -> Path:
    pq.write_table(pa.table({"query_id": ids, "embedding": embeddings}), path)
    return path


QUERY_CASES = {
    "empty": ([], [], [], "has no rows: there are no queries to search"),
    "zero_vectors": (
        ["qa", "qz"],
        [vectors(1), [[0.0] * DIM]],
        [],
        "row 1, query_id 'qz': the query's vectors are all zero",
    ),
    "nan": (
        ["qa", "qn"],
        [vectors(1), [[float("nan")] * DIM]],
        [],
        "row 1, query_id 'qn': embedding contains NaN or inf",
    ),
    "wrong_dim": (["qa"], [[[1.0] * 3]], [], "dimension"),
    "duplicate_ids": (
        ["qa", "qb", "qa"],
        [vectors(1), vectors(2), vectors(3)],
        [],
        "rows 0 and 2: duplicate query_id 'qa'",
    ),
    "k_0": (["qa"], [vectors(1)], ["--k", "0"], "--k must be a positive integer, got 0"),
    "k_negative": (["qa"], [vectors(1)], ["--k", "-3"], "--k must be a positive integer"),
    "candidates_0": (
        ["qa"],
        [vectors(1)],
        ["--candidates", "0"],
        "--candidates must be a positive integer, got 0",
    ),
    "candidates_negative": (
        ["qa"],
        [vectors(1)],
        ["--candidates", "-5"],
        "--candidates must be a positive integer",
    ),
    "batch_size_0": (
        ["qa"],
        [vectors(1)],
        ["--batch-size", "0"],
        "--batch-size must be a positive integer",
    ),
    "trec_space_query_id": (
        ["q a"],
        [vectors(1)],
        ["--trec", "RUN.trec"],
        "row 0: query_id 'q a' contains whitespace",
    ),
    "trec_tab_query_id": (
        ["q\ta"],
        [vectors(1)],
        ["--trec", "RUN.trec"],
        "query_id 'q\\ta' contains whitespace",
    ),
}


@pytest.mark.parametrize("case", sorted(QUERY_CASES))
def test_bad_queries(case, base, tmp_path, capsys) -> None:
    ids, embeddings, flags, message = QUERY_CASES[case]
    queries = _queries(tmp_path / "q.parquet", ids, embeddings)
    if not ids:
        pq.write_table(
            _queries(queries, ["x"], [vectors(0)]) and pq.read_table(queries)[:0], queries
        )
    flags = [str(tmp_path / f) if f.endswith(".trec") else f for f in flags]
    err = fails(capsys, "search", base.index, queries, "--out", tmp_path / "r.parquet", *flags)
    assert message in err
    assert not (tmp_path / "RUN.trec").exists()


def test_k_beyond_the_corpus_is_capped_not_allocated(base, tmp_path, capsys) -> None:
    run = tmp_path / "run.parquet"
    code, _, err = run_cli(
        capsys, "search", base.index, base.queries, "--out", run, "--k", "300000000"
    )
    assert code == 0, err
    counts = pq.read_table(run).group_by("query_id").aggregate([("doc_id", "count")])
    assert counts.column("doc_id_count").to_pylist() == [N_DOCS] * 3


def test_out_into_a_missing_folder_and_onto_the_queries(base, tmp_path, capsys) -> None:
    run = tmp_path / "new" / "deeper" / "run.parquet"
    assert run_cli(capsys, "search", base.index, base.queries, "--out", run)[0] == 0
    assert pq.read_table(run).num_rows == 30
    queries = tmp_path / "q.parquet"
    shutil.copy(base.queries, queries)
    before = queries.read_bytes()
    err = fails(capsys, "search", base.index, queries, "--out", queries)
    assert "is the queries file: the run would overwrite the queries" in err
    assert queries.read_bytes() == before


def test_trec_refuses_doc_ids_with_whitespace(tmp_path, capsys) -> None:
    corpus, idx = tmp_path / "c.parquet", tmp_path / "idx"
    pq.write_table(table(["doc 6", "doc-7"], [vectors(6), vectors(7)]), corpus)
    assert run_cli(capsys, "index", corpus, "--index", idx)[0] == 0
    queries = _queries(tmp_path / "q.parquet", ["q0"], [vectors(6)])
    run, trec = tmp_path / "run.parquet", tmp_path / "run.trec"
    err = fails(capsys, "search", idx, queries, "--out", run, "--trec", trec)
    assert "doc_id 'doc 6' contains whitespace" in err and "use the Parquet run" in err
    assert not trec.exists()
    # The Parquet run has no such limit, and eval scores it right.
    qrels = tmp_path / "qrels.json"
    qrels.write_text(json.dumps({"q0": {"doc 6": 1}}))
    code, out, _ = run_cli(capsys, "eval", run, qrels, "--metrics", "ndcg@10")
    assert code == 0 and "1.0000" in out
    # A TREC file whose ids hold spaces is refused by the reader, not misparsed.
    trec.write_text("q0 Q0 doc 6 1 0.9 latemm\n")
    err = fails(capsys, "eval", trec, qrels)
    assert "line 1: expected 'qid Q0 docid rank score [tag]' (ids without spaces), got 7" in err


def test_interrupted_search_resumes_only_with_the_same_arguments(base, tmp_path, capsys) -> None:
    queries = tmp_path / "q.parquet"
    good = [vectors(200 + i, 2) for i in range(4)]
    _queries(queries, ["qa", "qb", "qc", "qd"], [*good[:3], [[float("nan")] * DIM]])
    run = tmp_path / "run.parquet"
    args = ["search", base.index, queries, "--out", run, "--batch-size", "1", "--k", "5"]
    assert "query_id 'qd'" in fails(capsys, *args)
    parts = tmp_path / ".run.parquet.parts"
    assert len(list(parts.glob("part-*.parquet"))) == 3
    _queries(queries, ["qa", "qb", "qc", "qd"], good)
    err = fails(capsys, *args[:-1], "7")
    assert (
        f"{parts} holds the finished batches of an interrupted search with other arguments" in err
    )
    assert "k 5 -> 7" in err and "delete the folder" in err
    assert "where None -> 'year > 2000'" in fails(capsys, *args, "--where", "year > 2000")
    other = tmp_path / "other_idx"
    shutil.copytree(base.index, other)
    assert "index " in fails(capsys, "search", other, *args[2:])
    assert run_cli(capsys, *args)[0] == 0  # the same arguments resume
    result = pq.read_table(run)
    assert sorted(set(result.column("query_id").to_pylist())) == ["qa", "qb", "qc", "qd"]
    assert result.num_rows == 20 and not parts.exists()


# ---------------------------------------------------------------------------------- --where
WHERE_BAD = {
    "missing_column": (
        "nope > 1",
        "no metadata column 'nope'. Metadata columns: source, year, title, doc_id",
    ),
    "reserved_column": ("_row > 3", "no metadata column '_row'"),
    "read_csv_subquery": (
        "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0",
        "subqueries are not allowed",
    ),
    "read_text_subquery": (
        "(SELECT content FROM read_text('/etc/passwd'))::INT > 0",
        "subqueries are not allowed",
    ),
    "table_function_call": (
        "read_text('/etc/passwd') IS NOT NULL",
        "'read_text' is not a scalar function a filter may call",
    ),
    "in_subquery": ("year IN (SELECT 1)", "subqueries are not allowed"),
    "exists": ("EXISTS (SELECT 1)", "subqueries are not allowed"),
    "drop": ("1=1; DROP TABLE meta", "only one condition is allowed (no ';')"),
    "copy": ("1=1; COPY (SELECT 1) TO 'COPY_TARGET' (FORMAT csv)", "only one condition"),
    "attach": ("1=1; ATTACH 'ATTACH_TARGET' AS x", "only one condition"),
    "union": ("1=1 UNION SELECT 1, 2", "changes the query around the condition"),
    "limit": ("1=1 LIMIT 1", "changes the query around the condition"),
    "order_by": ("1=1 ORDER BY year", "changes the query around the condition"),
    "getenv": ("getenv('HOME') = 'x'", "'getenv' is not a scalar function"),
    "aggregate": ("count(*) > 0", "'count_star' is not a scalar function"),
    "window": ("row_number() OVER () > 1", "window expressions are not allowed"),
    "syntax": ("year >>>", "is not a single SQL condition"),
    "type_error": ("source + 1 > 2", "cannot apply --where"),
}


@pytest.mark.parametrize("case", sorted(WHERE_BAD))
def test_where_allows_only_a_metadata_condition(case, base, tmp_path, capsys) -> None:
    expression, message = WHERE_BAD[case]
    expression = expression.replace("COPY_TARGET", str(tmp_path / "x.sh"))
    expression = expression.replace("ATTACH_TARGET", str(tmp_path / "x.db"))
    err = fails(
        capsys,
        "search",
        base.index,
        base.queries,
        "--out",
        tmp_path / "r.parquet",
        "--where",
        expression,
    )
    assert message in err
    assert "root:" not in err  # /etc/passwd's content never reaches the output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no run


def test_where_filters_right_and_the_api_refuses_statements(base, tmp_path, capsys) -> None:
    from latemm import Retriever

    run = tmp_path / "r.parquet"
    for expression, keep in (
        ("year >= 2020 AND source = 'esg'", lambda m: m["year"] >= 2020 and m["source"] == "esg"),
        ("lower(source) LIKE 'n%' AND title LIKE '%;%' IS FALSE", lambda m: m["source"] == "news"),
        ("doc_id IN ('doc-3', 'doc-4')", lambda m: m["doc_id"] in ("doc-3", "doc-4")),
    ):
        code, _, err = run_cli(
            capsys, "search", base.index, base.queries, "--out", run, "--where", expression
        )
        assert code == 0, err
        got = pq.read_table(run).column("doc_id").to_pylist()
        index = Index.open(base.index)
        expected = {d for d in base.ids if keep({**index.get(d).metadata, "doc_id": d})}
        assert got and set(got) <= expected
    retriever = Retriever(base.index)
    for bad in ("1=1; DROP TABLE meta", "(SELECT 1) = 1"):
        with pytest.raises(InputError, match="--where"):
            retriever.search_embeddings([np.ones((2, DIM), np.float32)], where=bad)


# ------------------------------------------------------------------------------------- show
def test_show_escapes_and_refuses_foreign_runs(base, tmp_path, capsys) -> None:
    page = tmp_path / "p.html"
    show = ["show", base.run, "--index", base.index, "--out", page]
    # doc-0's text is a <script>; the query asks for it, so it shows.
    queries = _queries(tmp_path / "q.parquet", ["qs"], [vectors(0)])
    run = tmp_path / "run.parquet"
    assert run_cli(capsys, "search", base.index, queries, "--out", run, "--k", "3")[0] == 0
    assert (
        run_cli(capsys, "show", run, "--index", base.index, "--query", "qs", "--out", page)[0] == 0
    )
    text = page.read_text()
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "no results for query_id 'nope'" in fails(capsys, *show, "--query", "nope")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(
        pa.table({"query_id": ["q0"], "doc_id": ["elsewhere-1"], "rank": [1], "score": [0.5]}),
        foreign,
    )
    err = fails(capsys, "show", foreign, "--index", base.index, "--query", "q0")
    assert "1 doc_id(s) of" in err and "'elsewhere-1'" in err and "another index" in err


def test_show_skips_bad_images_and_reads_files_only_where_allowed(tmp_path, capsys) -> None:
    from PIL import Image

    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (15_000, 15_000)).save(bomb)  # over PIL's decompression-bomb limit
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    corpus = tmp_path / "c.parquet"
    pq.write_table(
        pa.table(
            {
                "doc_id": ["broken", "bomb", "by-path"],
                "embedding": [vectors(1), vectors(2), vectors(3)],
                "image": pa.array(
                    [
                        {"bytes": b"GIF89a broken", "path": None},
                        {"bytes": bomb.read_bytes(), "path": None},
                        {"bytes": None, "path": str(secret)},
                    ],
                    image_type,
                ),
            }
        ),
        corpus,
    )
    idx, run, page = tmp_path / "idx", tmp_path / "run.parquet", tmp_path / "p.html"
    assert run_cli(capsys, "index", corpus, "--index", idx)[0] == 0
    queries = _queries(tmp_path / "q.parquet", ["q0"], [vectors(1)])
    assert run_cli(capsys, "search", idx, queries, "--out", run)[0] == 0
    show = ["show", run, "--index", idx, "--query", "q0", "--out", page]
    assert run_cli(capsys, *show)[0] == 0
    text = page.read_text()
    assert text.count("thumbnail skipped: the image cannot be shown") == 2
    assert f"image file {secret} not shown: pass --allow-files" in text
    assert "<img" not in text
    assert run_cli(capsys, *show, "--allow-files", secret.parent)[0] == 0
    assert page.read_text().count("<img") == 1


# ------------------------------------------------------------------------------------- eval
EVAL_QRELS = {
    "three_fields.txt": ("q0 0 doc-1\n", "line 1: expected 'qid 0 docid relevance'"),
    "float_grade.txt": ("q0 0 doc-1 0.5\n", "line 1: relevance '0.5' is not an integer grade"),
    "word_grade.txt": ("q0 0 doc-1 high\n", "relevance 'high' is not an integer grade"),
    "empty.txt": ("", "has no relevance judgements"),
    "bad.json": ('{"q0": {"doc-1": 1}', "bad.json: not valid JSON"),
    "list.json": ("[1, 2]", "expected a JSON object {query_id: {doc_id: grade}}"),
    "other_queries.txt": ("zz 0 doc-1 1\n", "no query_id of the run is in the qrels"),
    "all_zero.txt": ("q0 0 doc-1 0\n", "the qrels judge no document relevant"),
    "qrels.parquet": (None, "qrels.parquet: a qrels Parquet file needs the columns"),
}


@pytest.mark.parametrize("name", sorted(EVAL_QRELS))
def test_eval_refuses_bad_qrels(name, base, tmp_path, capsys) -> None:
    content, message = EVAL_QRELS[name]
    qrels = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"query_id": ["q0"], "doc_id": ["doc-1"]}), qrels)
    else:
        qrels.write_text(content)
    assert message in fails(capsys, "eval", base.run, qrels)


def test_eval_refuses_bad_runs_and_metrics(base, tmp_path, capsys) -> None:
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q0 0 doc-1 1\n")
    assert "unknown metric 'ndgc@10'" in fails(
        capsys, "eval", base.run, qrels, "--metrics", "ndgc@10"
    )
    no_score = tmp_path / "noscore.parquet"
    pq.write_table(pa.table({"query_id": ["q0"], "doc_id": ["doc-1"]}), no_score)
    assert "needs the columns query_id, doc_id, score; missing score" in fails(
        capsys, "eval", no_score, qrels
    )
    dup = tmp_path / "dup.parquet"
    pq.write_table(
        pa.table({"query_id": ["q0", "q1", "q0"], "doc_id": ["d", "d", "d"], "score": [1.0] * 3}),
        dup,
    )
    err = fails(capsys, "eval", dup, qrels)
    assert "dup.parquet, row 2: query_id 'q0' with doc_id 'd' again (first at row 0)" in err
    trec = tmp_path / "run.trec"
    trec.write_text("q0 Q0 doc-1 1 0.9 x\nq0 Q0 doc-1 2 0.5 x\n")
    assert "line 2: query_id 'q0' with doc_id 'doc-1' again (first at line 1)" in fails(
        capsys, "eval", trec, qrels
    )
    assert "does not exist" in fails(capsys, "eval", tmp_path / "none.parquet", qrels)


def test_eval_keeps_runs_with_the_same_file_name_apart(base, tmp_path, capsys) -> None:
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q0 0 doc-1 1\nq1 0 doc-2 1\n")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(base.run, tmp_path / folder / "run.parquet")
    runs = [tmp_path / "a" / "run.parquet", tmp_path / "b" / "run.parquet"]
    report = tmp_path / "scores.json"
    code, out, _ = run_cli(capsys, "eval", *runs, qrels, "--json", report)
    assert code == 0 and "a/run" in out and "b/run" in out
    assert sorted(json.loads(report.read_text())) == ["a/run", "b/run"]
    assert "is given twice" in fails(capsys, "eval", runs[0], runs[0], qrels)


@pytest.mark.parametrize("length", [1_000, 100_000])
def test_eval_handles_very_long_ids(length, tmp_path, capsys) -> None:
    long_ids = [str(i) * length for i in range(1, 4)]
    run, qrels = tmp_path / "run.parquet", tmp_path / "qrels.json"
    pq.write_table(
        pa.table({"query_id": ["q" * length] * 3, "doc_id": long_ids, "score": [3.0, 2.0, 1.0]}),
        run,
    )
    qrels.write_text(json.dumps({"q" * length: {long_ids[0]: 1}}))
    start = time.perf_counter()
    code, out, _ = run_cli(capsys, "eval", run, qrels, "--metrics", "ndcg@10", "mrr@10")
    assert code == 0 and out.count("1.0000") == 2
    assert time.perf_counter() - start < 20


def test_trec_and_parquet_runs_score_the_same(base, tmp_path, capsys) -> None:
    run, trec = tmp_path / "run.parquet", tmp_path / "run.trec"
    args = ["search", base.index, base.queries, "--out", run, "--trec", trec]
    assert run_cli(capsys, *args)[0] == 0
    qrels = tmp_path / "qrels.txt"
    top = pq.read_table(run).to_pylist()
    qrels.write_text("".join(f"{r['query_id']} 0 {r['doc_id']} 1\n" for r in top if r["rank"] == 3))
    scores = [
        run_cli(capsys, "eval", path, qrels, "--metrics", "mrr@10")[1] for path in (run, trec)
    ]
    assert scores[0] == scores[1] and "0.3333" in scores[0]


# ----------------------------------------------------------- delete, ingest, encode, convert
def test_delete_with_a_missing_ids_file(base, idx, tmp_path, capsys) -> None:
    err = fails(capsys, "delete", idx, "--ids-file", tmp_path / "none.txt")
    assert f"--ids-file {tmp_path / 'none.txt'} does not exist" in err
    intact(idx, base.ids)


def test_ingest_never_replaces_a_corpus_with_nothing(tmp_path, capsys) -> None:
    pytest.importorskip("pypdfium2")
    out, empty = tmp_path / "corpus.parquet", tmp_path / "empty"
    empty.mkdir()
    out.write_bytes(b"an existing corpus")
    err = fails(capsys, "ingest", empty, "--out", out, "--quiet")
    assert f"no readable PDF in {empty}; nothing was written and {out} is unchanged" in err
    assert out.read_bytes() == b"an existing corpus"
    for dpi in ("0", "-5", "nan"):
        assert "--dpi must be between 0 and 2400" in fails(
            capsys, "ingest", empty, "--out", out, "--dpi", dpi
        )
    assert "--max-pixels must be a positive number" in fails(
        capsys, "ingest", empty, "--out", out, "--max-pixels", "0"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.parquet", "empty"]


def test_encode_with_a_missing_encoder_folder(base, tmp_path, capsys) -> None:
    missing = tmp_path / "no" / "model"
    err = fails(capsys, "encode", base.corpus, "--encoder", missing, "--out", tmp_path / "e.pq")
    assert f"--encoder {missing}: no such folder, and not a hub id" in err


def test_convert_refuses_ids_a_trec_qrels_file_cannot_hold(tmp_path, capsys) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "doc 6", "text": "a page"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q0", "text": "a question"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tdoc 6\t1\n")
    err = fails(capsys, "convert", beir, "--out", tmp_path / "out")
    assert "doc id 'doc 6' contains whitespace" in err and "rename the ids" in err
