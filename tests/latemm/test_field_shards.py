"""A sharded multi-field collection (issue 26: fields x shards) ranks exactly like the
unsharded fields index over the same pages: ids and scores equal, bit for bit, for every
fusion, with a BM25 field (collection-wide statistics), with ``where``, and after a delete
(finished or cut short) and a compact."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from index_store.errors import InputError
from latemm.cli import main
from latemm.index.bm25 import BM25Index
from latemm.index.field_maintenance import begin_delete, compact, delete
from latemm.index.field_shards import (
    compact_field_shards,
    delete_field_shards,
    index_field_shards,
    read_field_shards,
    shard_dir,
)
from latemm.index.fields import index_fields, open_field, read_fields
from latemm.index.sharded import BUILDING, DELETING, SHARDS_MANIFEST, is_field_shards, shard_of
from latemm.retrieval.field_search import FieldRetriever
from tests.helpers import SMALL_DIM as DIM
from tests.latemm.test_fields import FIELDS, GONE, N, corpus  # noqa: F401 - the fixture

SHARDS = 3
TEXTS = ["revenue growth", "cash debt risk", "audit", "equity margin profit"]


@pytest.fixture(scope="module")
def pair(corpus, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """The unsharded fields index and the 3-shard collection over the same corpus."""
    tmp = tmp_path_factory.mktemp("pair")
    index_fields(corpus[0], tmp / "one", FIELDS, dtype="float32", progress=False)
    index_field_shards(
        corpus[0], tmp / "sharded", FIELDS, num_shards=SHARDS, dtype="float32", progress=False
    )
    return tmp / "one", tmp / "sharded"


def _queries(n: int = len(TEXTS)) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(11)
    multi = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(n)]
    return {"m": multi, "s": [q.sum(0, keepdims=True) for q in multi]}


def _search(path, *, k=10, candidates=None, where=None, **options):
    retriever = FieldRetriever(path, **options)
    vectors = {n: v for n, v in _queries().items() if n in retriever.specs}
    return retriever.search(TEXTS, k=k, candidates=candidates, where=where, query_vectors=vectors)


def _assert_identical(got, want) -> None:
    """The same ids and the same scores, bit for bit (NaN where there is none)."""
    assert got.doc_ids.tolist() == want.doc_ids.tolist()
    for a, b in ((got.scores, want.scores), (got.fde_scores, want.fde_scores)):
        assert np.array_equal(a, b, equal_nan=True)
    assert np.array_equal(got.maxsim_scores, want.maxsim_scores, equal_nan=True)
    assert set(got.field_scores) == set(want.field_scores)
    for name, values in want.field_scores.items():
        assert np.array_equal(got.field_scores[name], values, equal_nan=True), name


def test_layout_records_fields_shards(pair) -> None:
    _, sharded = pair
    assert is_field_shards(sharded) and not (sharded / "fields.json").exists()
    recorded = json.loads((sharded / SHARDS_MANIFEST).read_text())
    assert recorded["format_version"] == 2 and recorded["shard_kind"] == "fields"
    collection = read_field_shards(sharded)
    assert collection.num_shards == SHARDS and sum(collection.documents) == N
    assert [f.name for f in collection.fields] == list(FIELDS)
    for shard in range(SHARDS):  # each shard a fields index of the pages routed to it
        fields = read_fields(shard_dir(sharded, shard))
        assert fields.names == list(FIELDS)
        index = open_field(shard_dir(sharded, shard), fields.get("m"))
        assert index.doc_ids() and all(shard_of(d, SHARDS) == shard for d in index.doc_ids())


def test_bm25_statistics_are_the_collections(pair) -> None:
    one, sharded = pair
    whole = open_field(one, read_fields(one).get("b"))
    parts = [
        open_field(shard_dir(sharded, s), read_fields(shard_dir(sharded, s)).get("b"))
        for s in range(SHARDS)
    ]
    union = BM25Index.union(parts)
    order = [union.position[d] for d in whole.doc_ids]
    assert sorted(union.doc_ids) == sorted(whole.doc_ids)
    assert np.array_equal(union.scores(TEXTS)[:, order], whole.scores(TEXTS))
    # A shard's own build scores with its own statistics: not the collection's.
    own = parts[0].scores(TEXTS)
    cols = [whole.position[d] for d in parts[0].doc_ids]
    assert not np.array_equal(own, whole.scores(TEXTS)[:, cols])


@pytest.mark.parametrize("fusion", ["auto", "rrf", "weighted"])
@pytest.mark.parametrize("candidates", [None, 6])
def test_sharded_fields_equal_unsharded(pair, fusion, candidates) -> None:
    one, sharded = pair
    for fields in (None, ["m", "b"], ["b"]):
        want = _search(one, candidates=candidates, fusion=fusion, fields=fields)
        got = _search(sharded, candidates=candidates, fusion=fusion, fields=fields)
        _assert_identical(got, want)


@pytest.mark.parametrize("fusion", ["auto", "rrf", "weighted"])
def test_sharded_fields_equal_unsharded_with_where(pair, fusion) -> None:
    """One condition for every query, and one per query (None: none; one matching nothing
    gives that query an empty list). One vector field and BM25: ``where`` is evaluated per
    shard and field, which costs most of this test."""
    one, sharded = pair
    for where in ("year >= 2020", ["year < 2010", None, "year > 3000", None]):
        want = _search(one, where=where, fusion=fusion, candidates=8, fields=["m", "b"])
        got = _search(sharded, where=where, fusion=fusion, candidates=8, fields=["m", "b"])
        _assert_identical(got, want)
    assert all(d is None for d in got.doc_ids[2]) and got.doc_ids[1][0] is not None


def test_bounded_second_phase_over_shards_equals_unsharded(pair) -> None:
    """k small against the candidates: the fast bounded pass runs per shard."""
    one, sharded = pair
    for fusion in ("weighted", "rrf"):
        want = _search(one, k=2, candidates=N, fusion=fusion)
        _assert_identical(_search(sharded, k=2, candidates=N, fusion=fusion), want)


@pytest.fixture
def pair_copy(corpus, tmp_path):  # noqa: F811 - the fixture imported above
    index_fields(corpus[0], tmp_path / "one", FIELDS, dtype="float32", progress=False)
    index_field_shards(
        corpus[0], tmp_path / "sharded", FIELDS, num_shards=SHARDS, dtype="float32",
        progress=False,
    )  # fmt: skip
    return tmp_path / "one", tmp_path / "sharded"


@pytest.mark.parametrize("fusion", ["auto", "rrf", "weighted"])
def test_equal_after_a_delete_and_a_compact(pair_copy, fusion) -> None:
    one, sharded = pair_copy
    assert delete(one, GONE) == 3
    assert delete_field_shards(sharded, GONE) == 3
    assert sum(read_field_shards(sharded).documents) == N - 3
    for candidates in (None, 6):
        want = _search(one, fusion=fusion, candidates=candidates, k=N)
        got = _search(sharded, fusion=fusion, candidates=candidates, k=N)
        _assert_identical(got, want)
        assert not set(GONE) & set(got.doc_ids.ravel())
    compact(one)
    generation = read_field_shards(sharded).generation
    assert compact_field_shards(sharded) == generation + 1
    _assert_identical(_search(sharded, fusion=fusion, k=N), _search(one, fusion=fusion, k=N))
    with pytest.raises(InputError, match="doc_id 'p01' is in no field of .*shard-000"):
        delete_field_shards(sharded, ["p01"])
    assert delete_field_shards(sharded, ["p01", "p02"], missing_ok=True) == 1


def test_an_unfinished_delete_is_left_out_by_readers_and_finished_by_the_next_writer(
    pair_copy,
) -> None:
    one, sharded = pair_copy
    begin_delete(one, GONE)  # the state a killed delete leaves on either kind
    (sharded / DELETING).write_text(json.dumps({"generation": 1, "doc_ids": GONE}))
    before = {p: p.stat().st_mtime_ns for p in sharded.rglob("*") if p.is_file()}
    for fusion in ("rrf", "weighted"):
        _assert_identical(_search(sharded, fusion=fusion, k=N), _search(one, fusion=fusion, k=N))
    after = {p: p.stat().st_mtime_ns for p in sharded.rglob("*") if p.is_file()}
    assert before == after  # readers never write
    assert main(["verify", str(sharded)]) == 1
    assert main(["compact", str(sharded)]) == 0  # a writer finishes the delete first
    assert not (sharded / DELETING).exists()
    assert sum(read_field_shards(sharded).documents) == N - 3
    assert main(["verify", str(sharded)]) == 0


def test_a_field_added_later_goes_into_every_shard(corpus, pair, tmp_path) -> None:  # noqa: F811
    one, _ = pair
    path = tmp_path / "sharded"
    first = {"m": FIELDS["m"], "s": FIELDS["s"]}
    index_field_shards(corpus[0], path, first, num_shards=SHARDS, dtype="float32", progress=False)
    counts = index_field_shards(corpus[0], path, {"b": "bm25"}, progress=False)
    assert counts["b"] == sum(1 for t in corpus[2] if t) and counts["m"] == N
    for shard in range(SHARDS):
        assert read_fields(shard_dir(path, shard)).names == ["m", "s", "b"]
    assert [f.name for f in read_field_shards(path).fields] == ["m", "s", "b"]
    _assert_identical(_search(path, fusion="rrf"), _search(one, fusion="rrf"))
    # Re-indexing the corpus (every recorded field) adds nothing and keeps N.
    again = index_field_shards(corpus[0], path, None, dtype="float32", progress=False)
    assert again == counts and read_field_shards(path).num_shards == SHARDS
    with pytest.raises(InputError, match="has 3 shards, not 2"):
        index_field_shards(corpus[0], path, None, num_shards=2, progress=False)


def test_an_interrupted_first_build_finishes_with_its_n_only(corpus, tmp_path) -> None:  # noqa: F811
    path = tmp_path / "sharded"
    path.mkdir()
    (path / BUILDING).write_text(json.dumps({"shard_kind": "fields", "num_shards": 2}))
    with pytest.raises(InputError, match="interrupted first build of 2 shards"):
        index_field_shards(corpus[0], path, FIELDS, num_shards=3, progress=False)
    index_field_shards(corpus[0], path, FIELDS, dtype="float32", progress=False)
    assert read_field_shards(path).num_shards == 2 and not (path / BUILDING).exists()


def test_cli_fields_x_shards(corpus, pair, tmp_path, capsys) -> None:  # noqa: F811
    """Build, search (a file, resumable, per-query where), info, verify and show through the
    CLI; the run equals the unsharded index's."""
    one, _ = pair
    path = tmp_path / "cli"
    argv = ["index", str(corpus[0]), "--index", str(path), "--dtype", "float32", "--quiet"]
    fields = [a for n, v in FIELDS.items() for a in ("--field", f"{n}={v}")]
    assert main([*argv, *fields, "--shards", str(SHARDS)]) == 0
    queries = tmp_path / "q.parquet"
    vectors = _queries()
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(len(TEXTS))],
                "text": TEXTS,
                "m": [v.tolist() for v in vectors["m"]],
                "s": [v.tolist() for v in vectors["s"]],
                "where": [None, "year < 2020", None, "year > 3000"],
            }
        ),
        queries,
    )
    runs = {}
    for name, idx in (("one", one), ("sharded", path)):
        out = tmp_path / f"{name}.parquet"
        search = ["search", str(idx), str(queries), "--out", str(out), "--quiet"]
        assert main([*search, "--query-column", "m=m", "--query-column", "s=s"]) == 0
        runs[name] = pq.read_table(out)
    assert runs["sharded"].equals(runs["one"])
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_shards"] == SHARDS and info["documents"] == N
    assert [f["name"] for f in info["fields"]] == list(FIELDS)
    assert main(["verify", str(path)]) == 0
    html = tmp_path / "show.html"
    run_file = tmp_path / "sharded.parquet"
    assert (
        main(["show", str(run_file), "--index", str(path), "--query", "q0", "--out", str(html)])
        == 0
    )
    top = pq.read_table(run_file).filter(pc.field("query_id") == "q0")
    assert top.num_rows and top.column("doc_id")[0].as_py() in html.read_text()
    # Options that cannot apply: one line naming the option, exit 2.
    capsys.readouterr()
    assert main([*argv, *fields, "--shards", "3", "--ray"]) == 2
    assert "--ray" in capsys.readouterr().err
    out = tmp_path / "r.parquet"
    assert main(["search", str(path), str(queries), "--out", str(out), "--refine-depth", "4"]) == 2
    err = capsys.readouterr().err
    assert "--refine-depth" in err and err.count("\n") == 1


@pytest.mark.slow
def test_reranked_on_the_coordinator_like_the_unsharded_index(pair, tmp_path) -> None:
    """The fused top ``rerank_depth`` is reranked once, after the shards' phases, with each
    page read from the shard that holds it: the unsharded index's order and scores."""
    pytest.importorskip("torchvision")  # Qwen2-VL's processor needs its video processor
    from latemm.retrieval.reranker import MLLMReranker
    from tests.latemm.tiny_models import build_qwen2_vl

    reranker = MLLMReranker(str(build_qwen2_vl(tmp_path / "qwen")), template="yesno")
    one, sharded = pair
    runs = [
        _search(path, k=6, fusion="rrf", reranker=reranker, rerank_depth=4)
        for path in (one, sharded)
    ]
    _assert_identical(runs[1], runs[0])
    assert np.array_equal(runs[1].rerank_scores, runs[0].rerank_scores, equal_nan=True)
    assert not np.isnan(runs[1].rerank_scores[:, :4]).any()
    top = [d for d in runs[1].doc_ids[:, :4].ravel() if d is not None]
    assert FieldRetriever(sharded).pages(top) == FieldRetriever(one).pages(top)


def test_an_interrupted_search_resumes_only_over_the_same_collection(
    pair_copy, tmp_path, capsys
) -> None:
    _, sharded = pair_copy
    rng = np.random.default_rng(12)
    vectors = [rng.standard_normal((3, DIM)).astype(np.float32).tolist() for _ in range(4)]
    qfile, out, clean = tmp_path / "q.parquet", tmp_path / "run.parquet", tmp_path / "c.parquet"

    def write_queries(last: str) -> None:
        texts = ["cash", "audit risk", "revenue", last]
        table = {"query_id": ["qa", "qb", "qc", "qd"], "text": texts, "embedding": vectors}
        pq.write_table(pa.table(table), qfile)

    write_queries("")  # the bm25 field cannot read qd: the search stops there
    args = ["search", str(sharded), str(qfile), "--fields", "m,b", "--k", "4", "--quiet"]
    assert main([*args, "--out", str(out), "--batch-size", "1"]) == 2
    parts = tmp_path / ".run.parquet.parts"
    assert len(list(parts.glob("part-*.parquet"))) == 3
    write_queries("growth")
    assert main([*args, "--out", str(clean)]) == 0
    assert main([*args, "--out", str(out), "--batch-size", "1"]) == 0  # resumes
    assert pq.read_table(out).equals(pq.read_table(clean)) and not parts.exists()
    write_queries("")
    assert main([*args, "--out", str(out), "--batch-size", "1"]) == 2
    assert main(["delete", str(sharded), "--ids", "p03"]) == 0  # a shard's fields change
    write_queries("growth")
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "interrupted search with other arguments" in err and "generation" in err


def test_verify_names_the_damaged_shard_and_field(pair_copy, capsys) -> None:
    _, sharded = pair_copy
    shard = shard_dir(sharded, 1)
    build = read_fields(shard).get("b").options["dir"]
    docs = shard / "fields" / "b" / build / "docs.parquet"
    docs.write_bytes(docs.read_bytes()[:-8] + b"damaged!")
    assert main(["verify", str(sharded)]) == 1
    err = capsys.readouterr().err
    assert "shard shard-0001: field 'b'" in err and "docs.parquet" in err


def test_a_bad_row_is_named_in_the_users_file(tmp_path, capsys) -> None:
    """A row a shard's field refuses is named by the user's file and row, as unsharded."""
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal((3, DIM)).astype(np.float32).tolist() for _ in range(20)]
    vectors[13] = rng.standard_normal((3, DIM - 3)).astype(np.float32).tolist()
    corpus_path = tmp_path / "c.parquet"
    ids = [f"d{i}" for i in range(20)]
    pq.write_table(
        pa.table({"doc_id": ids, "text": ["a b"] * 20, "embedding": vectors}), corpus_path
    )
    errors = []
    for name, extra in (("one", []), ("sharded", ["--shards", "3"])):
        argv = ["index", str(corpus_path), "--index", str(tmp_path / name), "--quiet"]
        assert main([*argv, "--field", "m=embedding:embedding", *extra]) == 2
        errors.append(capsys.readouterr().err)
    assert f"{corpus_path}, row 13, doc_id 'd13'" in errors[1]
    assert errors[1] == errors[0] and errors[1].count("\n") == 1


def test_one_writer_at_a_time_and_readers_take_no_lock(pair_copy, capsys) -> None:
    from index_store.housekeeping import acquire_lock, release_lock

    one, sharded = pair_copy
    lock = acquire_lock(sharded)  # another writer holds the collection
    try:
        assert main(["delete", str(sharded), "--ids", "p03"]) == 2
        assert "is being written by" in capsys.readouterr().err
        _assert_identical(_search(sharded), _search(one))  # a reader is not blocked
    finally:
        release_lock(lock)
    assert main(["delete", str(sharded), "--ids", "p03"]) == 0


def test_cli_options_that_cannot_apply_to_a_collection(pair, corpus, capsys) -> None:  # noqa: F811
    _, sharded = pair
    argv = ["index", str(corpus[0]), "--index", str(sharded), "--quiet"]
    for extra, named in (
        (["--encoder", "x"], "--encoder builds a one-field index"),
        (["--shards", "2"], "--shards 3"),
        (["--field", "m=embedding:emb_multi", "--ray"], "--ray"),
    ):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert named in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert read_field_shards(sharded).generation == 1  # nothing was written


def test_default_res4_fields_share_each_fields_codebook_across_shards(tmp_path) -> None:
    """Built with the default dtype, each vector field of every shard stores res4 under the
    codebook the unsharded fields index trains for that field (drawn from the whole corpus,
    ``latemm.index.fields.field_codebook``), also for a field added later; over every page the
    collection then gives the unsharded index's ids and scores."""
    from index_store import Index
    from tests.helpers import write_corpus

    path, n = tmp_path / "c.parquet", 300
    write_corpus(path, n)
    table = pq.read_table(path)
    table = table.append_column("emb2", table.column("embedding"))
    pq.write_table(table, path)
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    first, later = {"e": "embedding:embedding"}, {"f": "embedding:emb2"}
    for fields in (first, later):
        index_fields(path, one, fields, progress=False)
        index_field_shards(path, sharded, fields, num_shards=SHARDS, progress=False)
    for name in ("e", "f"):
        whole = Index.open(one / "fields" / name)
        assert whole.config.dtype == "res4"
        trained = whole.trained_codebook()
        assert trained is not None
        for shard in range(SHARDS):
            part = Index.open(shard_dir(sharded, shard) / "fields" / name)
            assert np.array_equal(part.trained_codebook().values, trained.values), (name, shard)
    rng = np.random.default_rng(2)
    queries = [rng.standard_normal((3, 16)).astype(np.float32) for _ in range(4)]
    for name in ("e", "f"):
        got, want = (
            FieldRetriever(folder, fields=[name], refine_depth=n).search(
                TEXTS, k=10, candidates=n, query_vectors={name: queries}
            )
            for folder in (sharded, one)
        )
        assert got.doc_ids.tolist() == want.doc_ids.tolist(), name
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
