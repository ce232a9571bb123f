"""Issue 30's sharded and resume cases (B5-B8, P12, P16-P20, P4) and the sharded cells of
issue 26's table, each through the CLI or the API as a user meets it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import latemm
from index_store import Index
from index_store.housekeeping import acquire_lock, release_lock
from latemm.cli import main
from latemm.index.sharded import (
    BUILDING,
    DELETING,
    SHARDS_MANIFEST,
    read_manifest,
    shard_of,
)
from latemm.retrieval.field_search import OneFieldRetriever
from latemm.retrieval.retriever import Retriever
from tests.helpers import DIM, read_run, write_pages, write_questions


def run(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    pages, questions = tmp_path / "c.parquet", tmp_path / "q.parquet"
    write_pages(pages, 80)
    write_questions(questions, 6)
    return pages, questions


# ------------------------------------------------------------------------------ B5
def test_b5_shards_without_documents_commit_and_search(tmp_path, capsys) -> None:
    pages, questions = tmp_path / "c5.parquet", tmp_path / "q.parquet"
    write_pages(pages, 5)
    write_questions(questions, 3)
    idx, plain = tmp_path / "idx", tmp_path / "plain"
    assert run("index", pages, "--index", idx, "--shards", "8", "--quiet") == 0
    assert run("index", pages, "--index", idx, "--shards", "8", "--quiet") == 0  # re-run
    manifest = read_manifest(idx)
    assert manifest.num_shards == 8 and sum(manifest.documents) == 5
    assert 0 in manifest.documents  # 5 ids over 8 shards: some shard is empty, and valid
    assert run("verify", idx) == 0
    assert run("index", pages, "--index", plain, "--quiet") == 0
    for name, folder in (("sharded", idx), ("plain", plain)):
        assert run("search", folder, questions, "--out", tmp_path / f"{name}.parquet") == 0
    assert read_run(tmp_path / "sharded.parquet") == read_run(tmp_path / "plain.parquet")
    assert len(read_run(tmp_path / "sharded.parquet")) == 3 * 5
    capsys.readouterr()


# ------------------------------------------------------------------------------ B6
def test_b6_interrupted_first_build_keeps_its_n(corpus, tmp_path, monkeypatch, capsys) -> None:
    import latemm.index.sharded as sharded

    pages, questions = corpus
    idx = tmp_path / "idx"
    real = sharded.index_corpus
    calls = []

    def dies_on_the_third_shard(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the build is killed with two shards written
        return real(*args, **kwargs)

    monkeypatch.setattr(sharded, "index_corpus", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        run("index", pages, "--index", idx, "--shards", "4", "--quiet")
    monkeypatch.setattr(sharded, "index_corpus", real)
    assert not (idx / SHARDS_MANIFEST).exists() and (idx / BUILDING).is_file()
    capsys.readouterr()
    # Another N would route the committed documents elsewhere: refused, naming the right N.
    assert run("index", pages, "--index", idx, "--shards", "3", "--quiet") == 2
    err = capsys.readouterr().err
    assert "--shards 4" in err and "interrupted first build of 4 shards" in err
    assert err.count("\n") == 1
    # The same N (or none) finishes it: every document once.
    assert run("index", pages, "--index", idx, "--quiet") == 0
    assert not (idx / BUILDING).exists()
    assert read_manifest(idx).num_shards == 4 and sum(read_manifest(idx).documents) == 80
    assert run("verify", idx) == 0
    out = tmp_path / "run.parquet"
    assert run("search", idx, questions, "--out", out, "--k", "80", "--candidates", "80") == 0
    table = pq.read_table(out).to_pandas()
    assert not table.duplicated(["query_id", "doc_id"]).any()
    assert table.groupby("query_id").size().max() == 80
    capsys.readouterr()


def test_b6_unrecorded_half_build_refuses_another_n(corpus, tmp_path, capsys) -> None:
    """A folder left by a build without building.json (an older latemm): shards whose ids
    another N routes elsewhere are refused, never duplicated."""
    pages, _ = corpus
    idx = tmp_path / "idx"
    assert run("index", pages, "--index", idx, "--shards", "4", "--quiet") == 0
    (idx / SHARDS_MANIFEST).unlink()  # the state a SIGKILL before the final commit leaves
    capsys.readouterr()
    assert run("index", pages, "--index", idx, "--shards", "3", "--quiet") == 2
    assert "interrupted build with more than 3 shards (shard-0003)" in capsys.readouterr().err
    assert run("index", pages, "--index", idx, "--shards", "5", "--quiet") == 2
    assert "interrupted build with another number of shards" in capsys.readouterr().err
    assert run("index", pages, "--index", idx, "--shards", "4", "--quiet") == 0
    assert sum(read_manifest(idx).documents) == 80
    capsys.readouterr()


# ------------------------------------------------------------------------------ B7
def test_b7_second_writer_is_refused_and_staging_is_private(corpus, tmp_path, capsys) -> None:
    pages, _ = corpus
    idx = tmp_path / "idx"
    assert run("index", pages, "--index", idx, "--shards", "4", "--quiet") == 0
    assert not list(idx.glob(".staging*"))  # a writer's staging folder goes with it
    more = tmp_path / "more.parquet"
    write_pages(more, 20, seed=5, start=9000)
    lock = acquire_lock(idx)  # another writer holds the sharded root
    try:
        capsys.readouterr()
        assert run("index", more, "--index", idx, "--quiet") == 2
        err = capsys.readouterr().err
        assert "one writer at a time" in err and "Traceback" not in err
        assert run("delete", idx, "--ids", "d00001") == 2
        assert run("compact", idx) == 2
    finally:
        release_lock(lock)
    assert sum(read_manifest(idx).documents) == 80  # nothing changed meanwhile
    assert run("index", more, "--index", idx, "--quiet") == 0
    assert sum(read_manifest(idx).documents) == 100
    capsys.readouterr()


# ------------------------------------------------------------------------------ B8
def _interrupted_search(index: Path, questions: Path, out: Path, *extra: str) -> None:
    """A search that stops at row 25 (a query of another dimension), keeping 2 batches."""
    table = pq.read_table(questions)
    vectors = table.column("embedding").to_pylist()
    vectors[25] = np.ones((2, DIM + 3)).tolist()
    bad = questions.with_name("bad.parquet")
    pq.write_table(
        table.set_column(2, "embedding", pa.array(vectors, pa.list_(pa.list_(pa.float32())))),
        bad,
    )
    shutil.copy(bad, questions)
    assert run("search", index, questions, "--out", out, "--batch-size", "10", *extra) == 2
    assert any(out.with_name(f".{out.name}.parts").glob("part-*.parquet"))


@pytest.mark.parametrize("kind", ["plain", "fields", "sharded"])
def test_b8_resume_notices_a_rewritten_queries_file(tmp_path, kind, capsys) -> None:
    pages, questions = tmp_path / "c.parquet", tmp_path / "q.parquet"
    write_pages(pages, 60)
    write_questions(questions, 40)
    idx = tmp_path / "idx"
    build = {
        "plain": [],
        "fields": ["--field", "emb=embedding:embedding"],
        "sharded": ["--shards", "3"],
    }[kind]
    assert run("index", pages, "--index", idx, *build, "--quiet") == 0
    out, clean = tmp_path / "run.parquet", tmp_path / "clean.parquet"
    _interrupted_search(idx, questions, out, "--quiet")
    write_questions(questions, 40, seed=77)  # regenerated: same path and ids, new vectors
    capsys.readouterr()
    assert run("search", idx, questions, "--out", out, "--batch-size", "10", "--quiet") == 0
    assert "changed since the interrupted search" in capsys.readouterr().err
    assert run("search", idx, questions, "--out", clean, "--batch-size", "10", "--quiet") == 0
    assert read_run(out) == read_run(clean)


def test_b8_unchanged_file_still_resumes(corpus, tmp_path, capsys) -> None:
    pages, _ = corpus
    questions = tmp_path / "q40.parquet"
    write_questions(questions, 40)
    idx = tmp_path / "idx"
    assert run("index", pages, "--index", idx, "--shards", "2", "--quiet") == 0
    out = tmp_path / "run.parquet"
    _interrupted_search(idx, questions, out, "--quiet")
    parts = out.with_name(f".{out.name}.parts")
    kept = sorted(p.name for p in parts.glob("part-*.parquet"))
    # The search options are part of the record too: another k is refused, parts kept.
    assert run("search", idx, questions, "--out", out, "--batch-size", "10", "--k", "3") == 2
    assert "k 10 -> 3" in capsys.readouterr().err
    argv = ["search", idx, questions, "--out", out, "--batch-size", "10"]
    assert run(*argv, "--text-column", "title") == 2  # another column read: another search
    assert "columns None -> " in capsys.readouterr().err
    assert sorted(p.name for p in parts.glob("part-*.parquet")) == kept


# ------------------------------------------------------------------------------ P12
def test_p12_half_built_folder_says_what_it_is(corpus, tmp_path, capsys) -> None:
    pages, questions = corpus
    idx = tmp_path / "idx"
    assert run("index", pages, "--index", idx, "--shards", "4", "--quiet") == 0
    (idx / SHARDS_MANIFEST).unlink()
    (idx / BUILDING).write_text(json.dumps({"num_shards": 4}))
    capsys.readouterr()
    assert run("verify", idx) == 1
    err = capsys.readouterr().err
    assert "unfinished sharded index" in err and "--shards 4" in err
    for argv in (["info", idx], ["search", idx, questions, "--out", tmp_path / "r.parquet"]):
        assert run(*argv) == 2
        err = capsys.readouterr().err
        assert "unfinished sharded index" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ P16
def test_p16_readers_honour_an_unfinished_delete_without_the_lock(corpus, tmp_path) -> None:
    pages, questions = corpus
    idx, plain = tmp_path / "idx", tmp_path / "plain"
    assert run("index", pages, "--index", idx, "--shards", "4", "--quiet") == 0
    assert run("index", pages, "--index", plain, "--quiet") == 0
    gone = [f"d{i:05d}" for i in range(0, 80, 3)]
    # A delete cut short: recorded, applied to one shard only.
    (idx / DELETING).write_text(json.dumps({"generation": 1, "doc_ids": gone}))
    first = [d for d in gone if shard_of(d, 4) == 0]
    with latemm.index.sharded.create(idx / "shards" / "shard-0000", read_manifest(idx).config) as w:
        w.delete(first)
        w.commit()
    assert run("delete", plain, "--ids", *gone) == 0
    lock = acquire_lock(idx)  # a writer holds the index: readers go on
    try:
        for name, folder in (("sharded", idx), ("plain", plain)):
            out = tmp_path / f"{name}.parquet"
            assert run("search", folder, questions, "--out", out, "--k", "15", "--quiet") == 0
        assert read_run(tmp_path / "sharded.parquet") == read_run(tmp_path / "plain.parquet")
        assert (idx / DELETING).is_file()  # readers wrote nothing
        assert run("verify", idx) == 1  # it is reported
    finally:
        release_lock(lock)
    with pytest.warns(UserWarning, match="finishing a delete"):
        assert run("compact", idx) == 0  # the next writer finishes it
    assert not (idx / DELETING).exists()
    assert sum(read_manifest(idx).documents) == 80 - len(gone)
    assert run("verify", idx) == 0


# ------------------------------------------------------------------------------ P17
def test_p17_edited_num_shards_is_damage(corpus, tmp_path, capsys) -> None:
    pages, questions = corpus
    idx = tmp_path / "idx"
    assert run("index", pages, "--index", idx, "--shards", "4", "--quiet") == 0
    payload = json.loads((idx / SHARDS_MANIFEST).read_text())
    payload["num_shards"], payload["shards"] = 2, payload["shards"][:2]
    (idx / SHARDS_MANIFEST).write_text(json.dumps(payload))
    capsys.readouterr()
    assert run("verify", idx) == 1
    err = capsys.readouterr().err
    assert "shard-0002" in err and "num_shards" in err
    assert run("search", idx, questions, "--out", tmp_path / "r.parquet", "--quiet") == 2
    assert run("index", pages, "--index", idx, "--shards", "2", "--quiet") == 2
    assert "num_shards edited" in capsys.readouterr().err
    # Only num_shards edited (the shard list intact) is reported too, not a traceback.
    payload = json.loads((idx / SHARDS_MANIFEST).read_text())
    (idx / SHARDS_MANIFEST).write_text(json.dumps({**payload, "num_shards": 3}))
    assert run("verify", idx) == 1


# ------------------------------------------------------------------------------ P18
def test_p18_rerank_options_are_checked_before_the_model_loads(corpus, tmp_path, capsys) -> None:
    pages, questions = corpus
    plain, idx = tmp_path / "plain", tmp_path / "idx"
    assert run("index", pages, "--index", plain, "--quiet") == 0
    assert run("index", pages, "--index", idx, "--shards", "2", "--quiet") == 0
    missing_model = tmp_path / "no-such-model"  # loading it would fail with another message
    out = tmp_path / "r.parquet"
    for argv, named in (
        ([plain, questions, "--ray"], "--ray"),
        ([idx, questions, "--k", "0"], "--k"),
        ([idx, tmp_path / "nope.parquet"], "nope.parquet"),
        ([idx, questions, "--fusion", "rrf"], "--fusion"),
    ):
        capsys.readouterr()
        assert run("search", *argv, "--out", out, "--rerank", missing_model) == 2
        err = capsys.readouterr().err
        assert named in err and "no-such-model" not in err, err


# ------------------------------------------------------------------------------ P19 + rerank
class TextLengthJudge:
    """A deterministic reranker: scores a page by how many query words its text holds."""

    model_id = "text-length-judge"

    def score(self, query, pages, doc_keys=None):  # noqa: ANN001 - the reranker protocol
        words = set(str(getattr(query, "text", query)).split())
        return np.array(
            [sum(w in words for w in (p.text or "").split()) for p in pages], np.float32
        )


def test_rerank_on_shards_equals_rerank_on_one_index(corpus, tmp_path) -> None:
    pages, _ = corpus
    plain, idx = tmp_path / "plain", tmp_path / "idx"
    latemm.build_index(pages, plain)
    latemm.build_index(pages, idx, num_shards=3)
    rng = np.random.default_rng(3)
    queries = [rng.standard_normal((4, DIM)).astype(np.float32) for _ in range(5)]
    texts = ["revenue growth market"] * 5
    judge = TextLengthJudge()
    one = Retriever(plain, reranker=judge, rerank_depth=12)
    three = OneFieldRetriever(idx, reranker=judge, rerank_depth=12)
    got = [r.rerank(r.search_embeddings(queries, k=12, candidates=80), texts) for r in (one, three)]
    assert (got[0].doc_ids == got[1].doc_ids).all()
    np.testing.assert_array_equal(got[0].scores, got[1].scores)
    np.testing.assert_array_equal(got[0].rerank_scores, got[1].rerank_scores)
    assert not np.isnan(got[1].rerank_scores).any()


def test_p19_delete_and_compact_on_shards_equal_one_index(corpus, tmp_path, capsys) -> None:
    pages, questions = corpus
    plain, idx = tmp_path / "plain", tmp_path / "idx"
    assert run("index", pages, "--index", plain, "--quiet") == 0
    assert run("index", pages, "--index", idx, "--shards", "3", "--quiet") == 0
    gone = [f"d{i:05d}" for i in range(1, 80, 4)]

    def same(step: str) -> None:
        for name, folder in (("plain", plain), ("idx", idx)):
            out = tmp_path / f"{name}-{step}.parquet"
            assert run("search", folder, questions, "--out", out, "--k", "20", "--quiet") == 0
        assert read_run(tmp_path / f"plain-{step}.parquet") == read_run(
            tmp_path / f"idx-{step}.parquet"
        )

    for folder in (plain, idx):
        assert run("delete", folder, "--ids", *gone) == 0
    assert f"deleted {len(gone)} documents" in capsys.readouterr().out
    same("delete")
    assert sum(read_manifest(idx).documents) == 80 - len(gone)
    for folder in (plain, idx):
        assert run("compact", folder) == 0
    same("compact")
    assert run("verify", idx) == 0
    assert run("delete", idx, "--ids", "d00001") == 2  # already gone: named
    assert "'d00001'" in capsys.readouterr().err
    assert run("delete", idx, "--ids", "d00001", "--missing-ok") == 0
    capsys.readouterr()
    assert run("info", idx) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_shards"] == 3 and info["documents"] == 80 - len(gone)
    assert all(
        len(Index.open(d)) == n
        for d, n in zip(
            sorted((idx / "shards").iterdir()), read_manifest(idx).documents, strict=True
        )
    )


# ------------------------------------------------------------------------------ encoder check
@pytest.mark.slow  # two MiniLM loads: 12-15 s on a loaded machine
def test_sharded_search_checks_the_encoder_as_one_index_does(tmp_path) -> None:
    """Same model name and dimension, other kind (mean-pooled single vectors): refused on a
    sharded index as on one index (the check was name and dimension only)."""
    from index_store.errors import InputError
    from latemm.encoders import load_encoder

    pages = tmp_path / "c.parquet"
    write_pages(pages, 12)
    pq.write_table(pq.read_table(pages).drop(["embedding"]), pages)
    minilm = latemm.minilm_path()
    multi = load_encoder(minilm)
    latemm.build_index(pages, tmp_path / "idx", encoder=multi, num_shards=2)
    latemm.build_index(pages, tmp_path / "one", encoder=multi)
    single = load_encoder(minilm, kind="single")
    assert (
        single.info.name_or_path == minilm
        and single.dim == read_manifest(tmp_path / "idx").config.dim
    )
    with pytest.raises(InputError, match="which differs"):
        OneFieldRetriever(tmp_path / "idx", encoder=single)
    with pytest.raises(InputError, match="which differs"):
        Retriever(tmp_path / "one", encoder=single)
    same = OneFieldRetriever(tmp_path / "idx", encoder=multi)
    assert same.search(["revenue"], k=3).doc_ids.shape == (1, 3)


@pytest.mark.slow
def test_p16_searches_during_deletes_see_one_state_and_never_fail(corpus, tmp_path) -> None:
    """Another process deletes batch after batch while this one searches in a loop, taking no
    lock: every search succeeds and sees the index with exactly the first j batches deleted,
    for some j (never a delete half applied across shards)."""
    import os
    import subprocess
    import sys

    pages, _ = corpus
    idx = tmp_path / "idx"
    assert run("index", pages, "--index", idx, "--shards", "4", "--quiet") == 0
    every = {f"d{i:05d}" for i in range(80)}
    batches = [[f"d{i:05d}" for i in range(b, 80, 10)] for b in range(8)]  # 8 ids each
    script = (
        "import sys, json; from latemm.index.sharded import delete_sharded\n"
        "for batch in json.loads(sys.argv[2]): delete_sharded(sys.argv[1], batch)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(idx), json.dumps(batches)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    views = set()
    queries = [np.ones((2, DIM), np.float32)]
    try:
        while writer.poll() is None or not views:
            got = OneFieldRetriever(idx).search_embeddings(queries, k=80, candidates=80)
            found = {d for d in got.doc_ids[0] if d is not None}
            gone = every - found
            j = len(gone) // 8
            assert gone == set().union(*batches[:j]), f"a half-applied view: {sorted(gone)}"
            views.add(j)
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert sum(read_manifest(idx).documents) == 80 - 64
    assert len(views) >= 1


def test_p18_api_names_the_index_before_loading_a_reranker(corpus, tmp_path) -> None:
    from index_store.errors import InputError

    pages, _ = corpus
    idx = tmp_path / "idx"
    assert run("index", pages, "--index", idx, "--shards", "2", "--quiet") == 0
    (idx / SHARDS_MANIFEST).unlink()
    missing_model = str(tmp_path / "no-such-model")
    with pytest.raises(InputError, match="unfinished sharded index"):
        latemm.search(idx, ["revenue"], reranker=missing_model)
    with pytest.raises(InputError, match="is not a latemm index"):
        latemm.search(tmp_path / "nothing", ["revenue"], reranker=missing_model)


def test_a_first_sharded_build_refuses_a_folder_of_other_files(corpus, tmp_path, capsys) -> None:
    pages, _ = corpus
    folder = tmp_path / "my-documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    assert run("index", pages, "--index", folder, "--shards", "2", "--quiet") == 2
    assert "is not empty and is not a latemm index" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "precious"


def test_a_bad_shard_count_creates_nothing(corpus, tmp_path, capsys) -> None:
    pages, _ = corpus
    assert run("index", pages, "--index", tmp_path / "new", "--shards", "0", "--quiet") == 2
    assert "--shards must be a positive number of shards, got 0" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
