"""A fields collection served by Ray actors (issue 26, ``latemm.runs.distributed.ShardActors``):
one actor per shard runs the per-part phases ``FieldRetriever`` calls
(``latemm.retrieval.field_parts``), the coordinator merges, fuses and reranks, and the result is the
in-process search's, bit for bit: 3 shards, a vector field and a bm25 field, RRF and weighted
fusion, with ``where``, after a delete, through the CLI (``--ray``) and the API (``ray=``). One
local Ray cluster serves the module (``test_ray.cluster``: started with its watchdog, shut down
after the last test)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

import latemm  # noqa: E402
from latemm.cli import main  # noqa: E402
from latemm.retrieval.field_search import FieldRetriever  # noqa: E402
from tests.latemm.test_field_shards import (  # noqa: E402, F401 - pair: the collection's fixture
    TEXTS,
    _assert_identical,
    _queries,
    _search,
    pair,
)
from tests.latemm.test_fields import corpus  # noqa: E402, F401 - pair's fixture
from tests.latemm.test_ray import cluster  # noqa: E402, F401 - the module's Ray cluster
from tests.latemm.test_shard_cases import TextLengthJudge  # noqa: E402


@pytest.fixture(scope="module")
def collection(cluster, pair, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """tests/latemm/test_field_shards.py's pair (test_fields.py's corpus: a multi-vector, a
    one-vector and a bm25 field, every 7th page without text, as one fields index and as a
    3-shard collection) and a queries file with the multi-vector field's query vectors and a
    per-query ``where``."""
    one, sharded = pair
    queries = tmp_path_factory.mktemp("ray-fields") / "queries.parquet"
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(len(TEXTS))],
                "text": TEXTS,
                "embedding": [v.tolist() for v in _queries()["m"]],
                "where": [None, "year < 2020", None, "year > 3000"],
            }
        ),
        queries,
    )
    return one, sharded, queries


@pytest.fixture(scope="module")
def served(collection):
    """One Ray actor per shard of the collection, shared by the tests that leave it alive."""
    from latemm.runs.distributed import ShardActors

    _, sharded, _ = collection
    actors = ShardActors(sharded, address="local")
    yield actors
    actors.close()


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_a_fields_collection_on_ray_ranks_exactly_as_in_process(collection, served, fusion):
    """3 shards, a vector field and a bm25 field, with and without a condition (one for all
    queries, one per query, one matching nothing, one on the page text), k below the candidates (the bounded second
    phase) and above: the parts served by one Ray actor per shard give the in-process search's
    ids and scores, bit for bit."""
    _, sharded, _ = collection
    page_text = "text LIKE '%a%'"  # read from each shard's page store (pickled to the actor)
    for where in (None, "year >= 2020", ["year < 2010", None, "year > 3000", page_text]):
        for k, candidates in ((10, None), (2, 36)):
            options = dict(fusion=fusion, fields=["m", "b"], where=where, k=k)
            want = _search(sharded, candidates=candidates, **options)
            got = _search(sharded, actors=lambda _: served, candidates=candidates, **options)
            _assert_identical(got, want)  # the unsharded index's too: test_field_shards
    assert len(served.actors) == 3  # one actor per shard, reused by every retriever


def test_reranked_on_the_coordinator_with_ray(collection, served) -> None:
    """Every field (two vector fields on the actors, bm25 here) and a reranker: reranked on the
    coordinator after the shards' phases, pages read from the page stores there."""
    from latemm.runs.distributed import ActorPart

    _, sharded, _ = collection
    judge = dict(reranker=TextLengthJudge(), rerank_depth=6, fusion="rrf", k=4)
    want = _search(sharded, **judge)
    got = _search(sharded, actors=lambda _: served, **judge)
    _assert_identical(got, want)
    assert np.array_equal(got.rerank_scores, want.rerank_scores, equal_nan=True)
    assert not np.isnan(got.rerank_scores).all()
    retriever = FieldRetriever(sharded, actors=lambda _: served)
    assert all(isinstance(p, ActorPart) for n in ("m", "s") for p in retriever.parts[n])
    assert len(retriever.parts["b"]) == 1  # bm25: the collection's one index, held here


def test_a_fields_collection_on_ray_after_a_delete(collection, tmp_path) -> None:
    """After a delete (finished, then one cut short that readers must honour) Ray serves the
    collection exactly as the in-process search does, without the deleted pages."""
    import json
    import shutil

    from latemm.index.field_shards import delete_field_shards
    from latemm.index.sharded import DELETING
    from latemm.runs.distributed import ShardActors
    from tests.latemm.test_fields import GONE

    _, sharded, _ = collection
    path = tmp_path / "sharded"
    shutil.copytree(sharded, path)
    assert delete_field_shards(path, GONE[:2]) == 2
    served = ShardActors(path, address="local")
    try:
        for state in ("deleted", "delete cut short"):
            if state == "delete cut short":
                (path / DELETING).write_text(json.dumps({"generation": 1, "doc_ids": GONE[2:]}))
            for fusion in ("rrf", "weighted"):
                want = _search(path, fusion=fusion, fields=["m", "b"], k=36)
                got = _search(path, actors=lambda _: served, fusion=fusion, fields=["m", "b"], k=36)
                _assert_identical(got, want)
                gone = GONE[:2] if state == "deleted" else GONE
                assert not set(gone) & set(got.doc_ids.ravel())
    finally:
        served.close()


def _cli_runs(idx, queries, tmp_path, fusion: str) -> tuple[pa.Table, pa.Table]:
    """``latemm search`` of the queries file (fields m and b, a per-query ``where``) in this
    process and with ``--ray local``."""
    runs = []
    for extra in ([], ["--ray", "local"]):
        out = tmp_path / f"{idx.name}-{fusion}-{len(extra)}.parquet"
        argv = ["search", str(idx), str(queries), "--out", str(out), "--quiet"]
        assert main([*argv, "--fields", "m,b", "--fusion", fusion, *extra]) == 0
        runs.append(pq.read_table(out))
    return runs[0], runs[1]


def _assert_same_run(there: pa.Table, here: pa.Table) -> None:
    assert there.num_rows > 0 and there.equals(here)
    for column in ("doc_id", "score", "score_m", "score_b"):
        a, b = there.column(column), here.column(column)
        assert np.array_equal(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False))


def test_cli_search_ray_on_a_fields_collection(collection, tmp_path, capsys) -> None:
    """``latemm search --ray`` on the 3-shard collection writes the in-process run; options
    that cannot apply are named (exit 2, one line), and ``ray=`` on an ordinary index too."""
    from index_store.errors import InputError
    from tests.helpers import write_corpus

    _, sharded, queries = collection
    _assert_same_run(*reversed(_cli_runs(sharded, queries, tmp_path, "weighted")))
    capsys.readouterr()
    out = tmp_path / "refused.parquet"
    argv = ["search", str(sharded), str(queries), "--out", str(out), "--ray", "--refine-depth", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--refine-depth" in err and err.count("\n") == 1 and "Traceback" not in err
    argv = ["search", str(sharded), str(queries), "--out", str(out), "--ray", "--device", "cuda"]
    assert main(argv) == 2  # the actors reserve no GPU: never silently on the CPU
    err = capsys.readouterr().err
    assert "--device cuda" in err and err.count("\n") == 1 and "Traceback" not in err
    one, _, _ = collection
    argv = ["search", str(one), str(queries), "--out", str(out), "--ray"]
    assert main(argv) == 2  # an unsharded fields index: one actor would serve all of it
    err = capsys.readouterr().err
    assert "--ray" in err and "unsharded" in err and err.count("\n") == 1, err
    with pytest.raises(InputError, match="ray='local' serves the shards .* unsharded multi-field"):
        latemm.search(one, queries, ray="local")
    plain = tmp_path / "plain"
    write_corpus(tmp_path / "corpus.parquet", 20)
    assert main(["index", str(tmp_path / "corpus.parquet"), "--index", str(plain), "--quiet"]) == 0
    with pytest.raises(InputError, match="ray='local' serves the shards .* an ordinary index"):
        latemm.search(plain, ["revenue"], ray="local")
    assert not out.exists()


@pytest.mark.slow  # two Ray actor sets: about 25 s on 2 busy cores
def test_api_search_on_ray_and_actors_over_an_unsharded_fields_index(collection, tmp_path) -> None:
    """``latemm.search(..., ray="local")`` gives the CLI's ``--ray`` run (and serves a plain
    sharded index with the in-process run); the part protocol
    also serves an unsharded fields index from one actor (``FieldRetriever(actors=)``; the
    CLI and the API refuse it, see above) with the in-process results."""
    from latemm.runs.distributed import ShardActors

    one, sharded, queries = collection
    here, there = _cli_runs(sharded, queries, tmp_path, "rrf")
    _assert_same_run(there, here)
    api = latemm.search(sharded, queries, fields=["m", "b"], fusion="rrf", ray="local")
    assert api.equals(there)
    # ray= serves a plain sharded index too (latemm.index.sharded, ShardActors).
    from tests.helpers import write_corpus
    from tests.helpers import write_queries as write_vector_queries

    pages, plain_queries, plain = tmp_path / "c.parquet", tmp_path / "q.parquet", tmp_path / "p"
    write_corpus(pages, 60)
    write_vector_queries(plain_queries, 5)
    assert main(["index", str(pages), "--index", str(plain), "--shards", "2", "--quiet"]) == 0
    want = latemm.search(plain, plain_queries, k=5)
    assert want.num_rows and latemm.search(plain, plain_queries, k=5, ray="local").equals(want)
    served = ShardActors(one, address="local")
    try:
        for fusion in ("rrf", "weighted"):
            want = _search(one, fusion=fusion, where="year >= 2010", k=5)
            got = _search(one, actors=lambda _: served, fusion=fusion, where="year >= 2010", k=5)
            _assert_identical(got, want)
        assert list(served.actors) == [one]
    finally:
        served.close()


@pytest.mark.slow  # waits for Ray to restart an actor: about 25 s on 2 busy cores
def test_a_dead_shard_actor_is_restarted_or_named(collection) -> None:
    """A shard's actor that dies is restarted by Ray and opens its fields again (the same
    results); one gone for good fails the search, naming the shard: never a partial result."""
    from latemm.runs.distributed import ShardActors, ShardUnavailableError

    _, sharded, _ = collection
    served = ShardActors(sharded, address="local")
    try:
        want = _search(sharded, fusion="rrf", fields=["m", "b"])
        retriever = FieldRetriever(
            sharded, actors=lambda _: served, fields=["m", "b"], fusion="rrf"
        )
        actors = [served.actors[folder] for folder in sorted(served.actors)]
        ray.kill(actors[1], no_restart=False)  # dies; Ray restarts it and retries the call
        vectors = {"m": _queries()["m"]}
        _assert_identical(retriever.search(TEXTS, query_vectors=vectors), want)
        ray.kill(actors[2], no_restart=True)  # gone for good
        with pytest.raises(ShardUnavailableError, match="shard shard-0002's actor died"):
            retriever.search(TEXTS, query_vectors=vectors)
    finally:
        served.close()


def test_help_and_readme_say_fields_collections_are_served(capsys) -> None:
    from pathlib import Path

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "sharded fields collection from Ray actors" in " ".join(capsys.readouterr().out.split())
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    assert "`search --ray` serves a sharded fields collection too" in readme
