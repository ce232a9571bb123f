"""One collection (issue 26): ``latemm.index.collection`` tells the four kinds of index apart in one
place; the Python API has every maintenance verb the CLI has, on every kind, with the same
answers; and one searcher, ``FieldRetriever``, searches every kind: a plain index and a
sharded one as their one field ``default``, with exactly ``Retriever``'s ids and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import latemm
from index_store.errors import InputError
from latemm.cli import main
from latemm.index.collection import open_collection
from latemm.retrieval.field_search import FieldRetriever, OneFieldRetriever
from latemm.retrieval.retriever import Retriever
from tests.helpers import DIM, write_corpus, write_pages

KINDS = {
    "plain": ([], "plain"),
    "fields": (["--field", "emb=embedding:embedding"], "fields"),
    "sharded": (["--shards", "3"], "sharded"),
    "fields-sharded": (["--field", "emb=embedding:embedding", "--shards", "3"], "field_shards"),
}


def _index(corpus: Path, path: Path, flags: list[str]) -> Path:
    assert main(["index", str(corpus), "--index", str(path), *flags, "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("collection") / "c.parquet"
    write_pages(path, 60)
    return path


@pytest.mark.parametrize("kind", list(KINDS))
def test_api_verbs_answer_as_the_cli_on_every_kind(corpus, kind, tmp_path, capsys) -> None:
    flags, name = KINDS[kind]
    api, cli = _index(corpus, tmp_path / "api", flags), _index(corpus, tmp_path / "cli", flags)
    assert open_collection(api).kind == name
    capsys.readouterr()
    gone = ["d00002", "d00005", "d00040"]
    assert latemm.delete(api, gone) == 3
    assert main(["delete", str(cli), "--ids", *gone]) == 0
    assert capsys.readouterr().out.startswith("deleted 3 documents from ")
    with pytest.raises(InputError, match="d00002"):  # already gone: named, unless missing_ok
        latemm.delete(api, ["d00002"])
    assert latemm.delete(api, ["d00002"], missing_ok=True) == 0
    state = latemm.compact(api)
    assert set(state) == ({"fields"} if kind == "fields" else {"generation"})
    assert main(["compact", str(cli)]) == 0
    assert latemm.verify(api) == []
    assert main(["verify", str(cli)]) == 0
    capsys.readouterr()
    info = latemm.info(api)
    assert main(["info", str(cli)]) == 0
    printed = json.loads(capsys.readouterr().out)

    def documents(report: dict) -> int:
        if "fields" in report and isinstance(report["fields"], list):  # an unsharded fields one
            return int(report["fields"][0]["stats"]["documents"])
        return int(report["documents"])

    assert documents(info) == documents(printed) == 57
    assert ("num_shards" in info) == open_collection(api).sharded
    if open_collection(api).sharded:
        assert info["num_shards"] == printed["num_shards"] == 3


def test_api_verify_names_a_damaged_file(corpus, tmp_path) -> None:
    idx = _index(corpus, tmp_path / "idx", ["--shards", "2"])
    meta = next((idx / "shards").rglob("meta.parquet"))
    meta.write_bytes(meta.read_bytes()[:-9] + b"damaged!!")
    problems = latemm.verify(idx)
    assert problems and any("meta.parquet" in p for p in problems), problems


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("one-searcher")
    write_corpus(tmp / "c.parquet", 600)
    # float16 on both sides: the FDE first stage of each shard scores a page as the one index
    # does at every candidate count (a res4 shard probes its own centroids: test_sharded's
    # test_sharded_res4_shares_the_unsharded_codebook compares those over every page)
    return _index(tmp / "c.parquet", tmp / "one", ["--dtype", "float16"]), _index(
        tmp / "c.parquet", tmp / "three", ["--shards", "3", "--dtype", "float16"]
    )


def _queries(n: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal((4, DIM)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize(("k", "candidates"), [(10, None), (10, 32), (40, 80), (5, 600)])
def test_the_collection_searcher_gives_a_plain_index_retrievers_answer(
    vectors, k, candidates
) -> None:
    """One field needs no fusion (``fusion.IDENTITY``): the ids, final, first-stage and MaxSim
    scores are exactly ``Retriever``'s, with its bounded fast pass or without."""
    one, _ = vectors
    want = Retriever(one).search_embeddings(_queries(), k=k, candidates=candidates)
    searcher = FieldRetriever(one)
    got = searcher.search(
        [None] * 12, k=k, candidates=candidates, query_vectors={"default": _queries()}
    )
    assert searcher.plan.fusion == "identity"
    assert got.doc_ids.tolist() == want.doc_ids.tolist()
    for name in ("scores", "fde_scores", "maxsim_scores"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_a_sharded_index_ranks_as_the_unsharded_one(vectors) -> None:
    """Its first stage takes the best candidates over every shard (no shard's list is
    rescored on its own), so at every candidate count it answers as one index; a delete in
    progress is left out without the writer's lock."""
    one, three = vectors
    for candidates in (None, 24, 100):
        want = Retriever(one).search_embeddings(_queries(), k=10, candidates=candidates)
        got = OneFieldRetriever(three).search_embeddings(_queries(), k=10, candidates=candidates)
        assert got.doc_ids.tolist() == want.doc_ids.tolist(), candidates
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.fde_scores, want.fde_scores)
    top = str(want.doc_ids[0, 0])
    (three / "deleting.json").write_text(json.dumps({"generation": 1, "doc_ids": [top]}))
    try:
        hidden = OneFieldRetriever(three).search_embeddings(_queries(), k=10)
    finally:
        (three / "deleting.json").unlink()
    assert top not in set(hidden.doc_ids.ravel().tolist())


def test_refine_depth_on_a_sharded_index(vectors, tmp_path) -> None:
    """``refine_depth`` works on a sharded index as on one index: each shard rescores its best
    candidates on the compact codes from its refine copy; deep enough, every candidate, and
    the answer is one index's. An index without a refine copy names the option."""
    one, three = vectors
    with pytest.raises(InputError, match="has no refine copy"):
        OneFieldRetriever(three, refine_depth=8)
    corpus = one.parent / "c.parquet"
    refine = ["--dtype", "pq1", "--refine", "float16"]
    plain = _index(corpus, tmp_path / "plain", refine)
    sharded = _index(corpus, tmp_path / "sharded", [*refine, "--shards", "3"])
    want = Retriever(plain, refine_depth=64).search_embeddings(_queries(), k=10, candidates=64)
    got = OneFieldRetriever(sharded, refine_depth=64).search_embeddings(
        _queries(), k=10, candidates=64
    )
    assert got.doc_ids.tolist() == want.doc_ids.tolist()
    np.testing.assert_array_equal(got.scores, want.scores)
    shallow = OneFieldRetriever(sharded, refine_depth=12).search_embeddings(
        _queries(), k=10, candidates=64
    )
    exact = {  # every candidate rescored from the refine copy
        (q, d): s
        for q, (ids, scores) in enumerate(zip(want.doc_ids, want.scores, strict=True))
        for d, s in zip(ids, scores, strict=True)
    }
    for q, (ids, scores) in enumerate(zip(shallow.doc_ids, shallow.scores, strict=True)):
        for d, s in zip(ids, scores, strict=True):
            if (q, d) in exact:
                assert s == exact[(q, d)]


def test_refine_depth_with_fused_fields_is_named(corpus, tmp_path) -> None:
    idx = _index(corpus, tmp_path / "f", ["--field", "emb=embedding:embedding"])
    assert main(["index", str(corpus), "--index", str(idx), "--field", "bm=bm25"]) == 0
    with pytest.raises(InputError, match="--refine-depth applies to one searched field"):
        FieldRetriever(idx, refine_depth=8)


def test_named_fields_into_a_sharded_index_of_one_encoder_are_refused(corpus, tmp_path) -> None:
    idx = _index(corpus, tmp_path / "s", ["--shards", "2"])
    with pytest.raises(InputError, match="sharded index of one encoder"):
        latemm.build_index(corpus, idx, fields={"emb": "embedding:embedding"})
    assert not (idx / "fields.json").exists() and latemm.verify(idx) == []
