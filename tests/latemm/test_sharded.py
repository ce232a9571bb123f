"""Sharded indexes in one process: the same top-k as one index, deterministic routing, an
atomic manifest, and errors that name a missing or damaged shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from index_store import Index
from index_store.errors import IndexCorruptError, InputError
from latemm.cli import main
from latemm.index.sharded import (
    SHARDS_MANIFEST,
    assign_shards,
    index_sharded,
    read_manifest,
    shard_of,
)
from latemm.retrieval import retriever as retriever_module
from latemm.retrieval.field_search import OneFieldRetriever
from latemm.retrieval.retriever import Retriever
from tests.helpers import DIM, write_corpus, write_queries

N_DOCS = 400


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """One corpus indexed twice: as one index and as 4 shards (through the CLI)."""
    tmp = tmp_path_factory.mktemp("sharded")
    corpus, queries = tmp / "corpus.parquet", tmp / "queries.parquet"
    write_corpus(corpus, N_DOCS)
    write_queries(queries, 12)
    single, sharded = tmp / "single", tmp / "sharded"
    # float16 on both sides: their FDE first stage rescores every document at candidates >=
    # the corpus (the default res4 is test_sharded_res4_shares_the_unsharded_codebook's).
    for folder, shards in ((single, []), (sharded, ["--shards", "4"])):
        args = ["index", str(corpus), "--index", str(folder), "--dtype", "float16", *shards]
        assert main([*args, "--quiet"]) == 0
    return corpus, queries, single, sharded


def _queries(n: int = 12, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((4, DIM)).astype(np.float32) for _ in range(n)]


def test_four_shards_return_the_top_k_of_one_index(built) -> None:
    _, _, single, sharded = built
    queries = _queries()
    # Candidates >= corpus size: both sides rescore every document, so both are exact.
    one = Retriever(single).search_embeddings(queries, k=20, candidates=N_DOCS)
    four = OneFieldRetriever(sharded).search_embeddings(queries, k=20, candidates=N_DOCS)
    assert (one.doc_ids == four.doc_ids).all()
    np.testing.assert_array_equal(one.scores, four.scores)
    np.testing.assert_array_equal(one.fde_scores, four.fde_scores)
    np.testing.assert_array_equal(one.maxsim_scores, four.maxsim_scores)
    # A filter applies per shard and still merges to the single index's answer.
    where = "source = 'esg' AND year >= 2015"
    one = Retriever(single).search_embeddings(queries, k=7, candidates=N_DOCS, where=where)
    four = OneFieldRetriever(sharded).search_embeddings(
        queries, k=7, candidates=N_DOCS, where=where
    )
    assert (one.doc_ids == four.doc_ids).all()
    np.testing.assert_array_equal(one.scores, four.scores)


def test_cli_search_and_api_on_a_sharded_dir(built, tmp_path, capsys) -> None:
    _, queries, single, sharded = built
    runs = {}
    for name, idx in (("single", single), ("sharded", sharded)):
        out = tmp_path / f"{name}.parquet"
        assert (
            main(["search", str(idx), str(queries), "--out", str(out), "--k", "10"])
            == 0  # default candidates (512) >= 400 docs: exact on both sides
        )
        runs[name] = pq.read_table(out)
    assert runs["single"].equals(runs["sharded"])
    capsys.readouterr()
    assert main(["info", str(sharded)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_shards"] == 4 and info["documents"] == N_DOCS
    assert sum(s["documents"] for s in info["shards"]) == N_DOCS
    assert main(["verify", str(sharded)]) == 0
    import latemm

    table = latemm.search(sharded, str(queries), k=10)
    assert table.equals(runs["single"])


def test_shard_assignment_is_deterministic_and_disjoint(built) -> None:
    _, _, _, sharded = built
    ids = [f"doc-{i}" for i in range(N_DOCS)]
    first = assign_shards(ids, 4)
    # Same answer in another interpreter (no PYTHONHASHSEED dependence), pinned values.
    code = (
        "from latemm.index.sharded import assign_shards; "
        "print(assign_shards([f'doc-{i}' for i in range(400)], 4).tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert [int(x) for x in other.strip()[1:-1].split(",")] == first.tolist()
    # Pinned: a change of hash would move committed ids to other shards.
    assert [shard_of("doc-0", 4), shard_of("doc-1", 4), shard_of("a", 7)] == [1, 2, 4]
    assert shard_of("ünïcode", 1000) == 443
    assert min(np.bincount(first, minlength=4)) > 60  # roughly balanced
    held = {}
    for s in range(4):
        for doc_id in Index.open(sharded / "shards" / f"shard-{s:04d}").doc_ids():
            assert doc_id not in held, f"{doc_id} in shards {held[doc_id]} and {s}"
            held[doc_id] = s
            assert shard_of(doc_id, 4) == s
    assert sorted(held) == sorted(ids)


def test_pinned_hash_values() -> None:
    # blake2b-64 of the UTF-8 id, little-endian, mod N: fixed forever (a change moves ids).
    import hashlib

    for doc_id in ("doc-0", "ünïcode", "42"):
        digest = hashlib.blake2b(doc_id.encode(), digest_size=8).digest()
        assert shard_of(doc_id, 13) == int.from_bytes(digest, "little") % 13


def test_rerun_and_append_keep_ids_in_their_shard(tmp_path) -> None:
    corpus = tmp_path / "corpus.parquet"
    write_corpus(corpus, 120)
    idx = tmp_path / "idx"
    report = index_sharded(corpus, idx, num_shards=3, progress=False)
    assert report.added == 120 and report.generation == 1
    again = index_sharded(corpus, idx, progress=False)  # N comes from shards.json
    assert again.added == 0 and again.skipped == 120 and again.generation == 2
    bigger = tmp_path / "bigger.parquet"
    write_corpus(bigger, 200)  # the same first 120 rows and 80 new ones
    more = index_sharded(bigger, idx, num_shards=3, progress=False)
    assert more.added == 80 and more.documents == 200
    manifest = read_manifest(idx)
    assert sum(manifest.documents) == 200
    for s in range(3):
        assert all(
            shard_of(d, 3) == s for d in Index.open(idx / "shards" / f"shard-{s:04d}").doc_ids()
        )
    with pytest.raises(InputError, match="has 3 shards, not 5; doc ids are routed by hash mod N"):
        index_sharded(corpus, idx, num_shards=5, progress=False)
    with pytest.raises(InputError, match="holds an ordinary \\(unsharded\\) index"):
        single = tmp_path / "single"
        assert main(["index", str(corpus), "--index", str(single), "--quiet"]) == 0
        index_sharded(corpus, single, num_shards=2, progress=False)


def test_manifest_commit_is_atomic(tmp_path, monkeypatch) -> None:
    """shards.json changes only by an atomic rename: a failed commit leaves the previous one
    whole, and a build that fails before its commit leaves readers on the previous state."""
    import latemm.index.sharded as sharded
    from index_store import fsio

    corpus = tmp_path / "corpus.parquet"
    write_corpus(corpus, 60)
    idx = tmp_path / "idx"
    index_sharded(corpus, idx, num_shards=2, progress=False)
    before = (idx / SHARDS_MANIFEST).read_bytes()

    def torn_replace(src: str, dst: str) -> None:
        raise OSError("disk full during rename")

    def torn_commit(path: Path, payload: dict) -> None:
        # Only the shards.json commit fails; the shards' own commits go through.
        with monkeypatch.context() as m:
            m.setattr(fsio.os, "replace", torn_replace)
            fsio.write_json_atomic(path, payload)

    monkeypatch.setattr(sharded, "write_json_atomic", torn_commit)
    bigger = tmp_path / "bigger.parquet"
    write_corpus(bigger, 90)
    with pytest.raises(OSError, match="disk full"):
        index_sharded(bigger, idx, progress=False)
    monkeypatch.undo()
    assert (idx / SHARDS_MANIFEST).read_bytes() == before
    assert read_manifest(idx).generation == 1 and sum(read_manifest(idx).documents) == 60
    leftovers = [p.name for p in idx.iterdir() if p.name.startswith(".") and "tmp" in p.name]
    assert all(name.startswith(f".{SHARDS_MANIFEST}.tmp-") for name in leftovers)
    # verify notices that a shard moved past the manifest (the commit did not happen) ...
    problems = main(["verify", str(idx)])
    assert problems == 1
    # ... and re-running finishes the commit.
    assert index_sharded(bigger, idx, progress=False).documents == 90
    assert main(["verify", str(idx)]) == 0
    assert sharded.read_manifest(idx).generation == 2


def test_missing_or_damaged_shard_is_named(tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus.parquet"
    write_corpus(corpus, 80)
    idx = tmp_path / "idx"
    index_sharded(corpus, idx, num_shards=3, progress=False)
    # Damage one file of shard 1 (a metadata file under 64 MB is checksummed at open).
    seg = next((idx / "shards" / "shard-0001" / "segments").iterdir())
    meta = seg / "meta.parquet"
    meta.write_bytes(meta.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(IndexCorruptError, match="shard shard-0001 .*cannot be opened"):
        OneFieldRetriever(idx)
    assert main(["verify", str(idx)]) == 1
    err = capsys.readouterr().err
    assert "shard shard-0001: " in err and "meta.parquet" in err and "shard-0000" not in err
    queries = tmp_path / "queries.parquet"
    write_queries(queries, 3)
    assert main(["search", str(idx), str(queries), "--out", str(tmp_path / "r.parquet")]) == 2
    assert "shard shard-0001" in capsys.readouterr().err
    # A missing shard folder.
    import shutil

    shutil.rmtree(idx / "shards" / "shard-0002")
    with pytest.raises(IndexCorruptError, match="shard shard-0002 .*cannot be opened"):
        from latemm.index.sharded import open_shard

        open_shard(idx, 2)
    assert main(["verify", str(idx)]) == 1
    assert "shard shard-0002: " in capsys.readouterr().err
    assert main(["info", str(idx)]) == 2
    assert "shard shard-0001" in capsys.readouterr().err


def test_ray_flag_needs_a_sharded_index(built, tmp_path, capsys) -> None:
    _, queries, single, _ = built
    out = tmp_path / "run.parquet"
    assert main(["search", str(single), str(queries), "--out", str(out), "--ray"]) == 2
    assert "--ray serves a sharded index" in capsys.readouterr().err


def test_sharded_res4_shares_the_unsharded_codebook(tmp_path) -> None:
    """A sharded collection stores the default residual codes (res4), not float16: its shards
    share one codebook, drawn from the whole corpus, and it is the one the unsharded index of
    the same corpus trains. Every page is then coded as that index codes it, so searched over
    every page (depth and candidates >= the corpus) the shards give its ids and scores."""
    corpus = tmp_path / "corpus.parquet"
    write_corpus(corpus, N_DOCS)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["index", str(corpus), "--index", str(single), "--quiet"]) == 0
    assert main(["index", str(corpus), "--index", str(sharded), "--shards", "4", "--quiet"]) == 0
    one = Index.open(single)
    assert one.config.dtype == "res4" and one.config.first_stage == "centroids"
    trained = one.trained_codebook()
    assert trained is not None
    shards = sorted((sharded / "shards").iterdir())
    assert len(shards) == 4
    for folder in shards:
        shard = Index.open(folder)
        assert shard.config == one.config
        got = shard.trained_codebook()
        assert got is not None and got.trained_on == trained.trained_on
        assert np.array_equal(got.values, trained.values)
    queries = _queries()
    exact = Retriever(single, refine_depth=N_DOCS).search_embeddings(
        queries, k=20, candidates=N_DOCS
    )
    four = OneFieldRetriever(sharded, refine_depth=N_DOCS).search_embeddings(
        queries, k=20, candidates=N_DOCS
    )
    assert (exact.doc_ids == four.doc_ids).all()
    np.testing.assert_allclose(four.scores, exact.scores, rtol=1e-6)
    # Codes of 11 bytes per 16-d vector (3 for the centroid, 8 for the residual) against 32.
    float16 = tmp_path / "float16"
    assert main(["index", str(corpus), "--index", str(float16), "--shards", "4",
                 "--dtype", "float16", "--quiet"]) == 0  # fmt: skip
    vectors = {
        name: sum(f.stat().st_size for f in (root / "shards").rglob("vectors.npy"))
        for name, root in (("res4", sharded), ("float16", float16))
    }
    assert vectors["res4"] * 2 < vectors["float16"]


def test_res4_shards_multiply_a_query_by_the_centroids_once(tmp_path, monkeypatch) -> None:
    """PLAID's query x centroid table, which a residual index's first stage and rescoring
    both read, is one product per query for the whole collection: its shards are coded under
    one codebook, so they share the table rather than each phase of each shard making its own
    (4 shards: 8 products a query before). The results are those of per-query products."""
    corpus = tmp_path / "corpus.parquet"
    write_corpus(corpus, N_DOCS)
    sharded = tmp_path / "sharded"
    assert main(["index", str(corpus), "--index", str(sharded), "--shards", "4", "--quiet"]) == 0
    queries = _queries(seed=7)  # vectors no other test searches: none of their tables is kept
    products = []
    real = retriever_module._centroid_table
    monkeypatch.setattr(
        retriever_module,
        "_centroid_table",
        lambda segment, query: products.append(len(query)) or real(segment, query),
    )
    got = OneFieldRetriever(sharded).search_embeddings(queries, k=10)
    assert len(products) == len(queries)
    # Without the kept tables (each query's own product in each phase of each shard).
    monkeypatch.setattr(retriever_module, "TABLE_CACHE_BYTES", 0)
    alone = OneFieldRetriever(sharded).search_embeddings(queries, k=10)
    assert len(products) == len(queries) * 9
    assert (got.doc_ids == alone.doc_ids).all()
    np.testing.assert_array_equal(got.scores, alone.scores)


def test_a_first_build_cut_short_keeps_the_codebook_of_its_committed_shards(
    tmp_path, monkeypatch
) -> None:
    """Run again (here over a corpus that grew meanwhile, whose draw would differ), the build
    codes its remaining shards with the codebook of the shards it committed."""
    import latemm.index.sharded

    corpus = tmp_path / "corpus.parquet"
    write_corpus(corpus, N_DOCS)
    idx = tmp_path / "idx"
    real, calls = latemm.index.sharded.index_corpus, []

    def cut_short(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(latemm.index.sharded, "index_corpus", cut_short)
    with pytest.raises(KeyboardInterrupt):
        index_sharded(corpus, idx, num_shards=4, progress=False)
    monkeypatch.undo()
    committed = Index.open(calls[0]).trained_codebook()
    assert committed is not None
    write_corpus(corpus, N_DOCS + 100, seed=5)  # other vectors: another draw
    index_sharded(corpus, idx, progress=False)
    for folder in sorted((idx / "shards").iterdir()):
        got = Index.open(folder).trained_codebook()
        assert got is not None and np.array_equal(got.values, committed.values), folder.name
