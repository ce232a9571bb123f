"""Issue 26's table, cell by cell, through the CLI: every feature on a plain, a multi-field, a
sharded index and a sharded multi-field collection either works (and gives the plain index's
answer) or is a one-line error naming the option, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import latemm
from latemm.cli import main
from latemm.index.sharded import ShardManifest, read_manifest
from tests.helpers import read_run, write_pages, write_questions

KINDS = {
    "plain": [],
    "fields": ["--field", "emb=embedding:embedding"],
    "sharded": ["--shards", "3"],
    "fields-sharded": ["--field", "emb=embedding:embedding", "--shards", "3"],
}


def run(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("kinds")
    pages, questions = tmp / "c.parquet", tmp / "q.parquet"
    write_pages(pages, 60)
    write_questions(questions, 4)
    out = {"corpus": pages, "queries": questions}
    for kind, flags in KINDS.items():
        assert run("index", pages, "--index", tmp / kind, *flags, "--quiet") == 0
        out[kind] = tmp / kind
    return out


def _one_error_line(capsys: pytest.CaptureFixture[str], *named: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for name in named:
        assert name in err, err
    return err


@pytest.mark.parametrize("kind", list(KINDS))
def test_where_that_matches_no_page_is_an_empty_run(indexes, kind, tmp_path, capsys) -> None:
    out = tmp_path / "run.parquet"
    argv = ["search", indexes[kind], indexes["queries"], "--out", out, "--quiet"]
    assert run(*argv, "--where", "year > 3000") == 0
    assert pq.read_table(out).num_rows == 0
    assert run(*argv, "--where", "year = 2003") == 0  # a filter that matches: results
    assert set(pq.read_table(out).column("doc_id").to_pylist()) <= {"d00003", "d00028", "d00053"}
    assert pq.read_table(out).num_rows == 4 * 3
    capsys.readouterr()


@pytest.mark.parametrize("kind", list(KINDS))
def test_k_beyond_the_collection_is_capped_on_every_kind(indexes, kind, tmp_path) -> None:
    out = tmp_path / "run.parquet"
    argv = ["search", indexes[kind], indexes["queries"], "--out", out, "--quiet"]
    assert run(*argv, "--k", "300000000") == 0  # no (Q, k) arrays of that width
    counts = pq.read_table(out).group_by("query_id").aggregate([("doc_id", "count")])
    assert counts.column("doc_id_count").to_pylist() == [60] * 4


def test_where_empty_through_the_api(indexes) -> None:
    for kind in KINDS:
        got = latemm.search(indexes[kind], indexes["queries"], where="year > 3000")
        assert got.num_rows == 0, kind


@pytest.mark.parametrize("kind", list(KINDS))
def test_delete_compact_verify_info_on_every_kind(indexes, kind, tmp_path, capsys) -> None:
    idx = tmp_path / kind
    assert run("index", indexes["corpus"], "--index", idx, *KINDS[kind], "--quiet") == 0
    gone = ["d00002", "d00005", "d00040"]
    assert run("delete", idx, "--ids", *gone) == 0
    assert run("compact", idx) == 0
    assert run("verify", idx) == 0
    out = tmp_path / "run.parquet"
    assert run("search", idx, indexes["queries"], "--out", out, "--k", "60", "--quiet") == 0
    found = set(pq.read_table(out).column("doc_id").to_pylist())
    assert len(found) == 57 and not found & set(gone)
    capsys.readouterr()
    assert run("info", idx) == 0
    info = json.loads(capsys.readouterr().out)
    if kind in ("sharded", "fields-sharded"):
        assert info["num_shards"] == 3 and info["documents"] == 57


def test_sharded_equals_plain_after_delete_and_compact(indexes, tmp_path, capsys) -> None:
    runs = {}
    for kind in ("plain", "sharded"):
        idx = tmp_path / kind
        assert run("index", indexes["corpus"], "--index", idx, *KINDS[kind], "--quiet") == 0
        assert run("delete", idx, "--ids", "d00010", "d00011", "d00031") == 0
        assert run("compact", idx) == 0
        out = tmp_path / f"{kind}.parquet"
        assert run("search", idx, indexes["queries"], "--out", out, "--k", "25") == 0
        runs[kind] = read_run(out)
    assert runs["plain"] == runs["sharded"]
    capsys.readouterr()


def test_fields_sharded_equals_fields_after_delete_and_compact(indexes, tmp_path, capsys) -> None:
    runs = {}
    for kind in ("fields", "fields-sharded"):
        idx = tmp_path / kind
        # stored as shards store by default (float16: latemm.index.sharded.shard_options)
        flags = [*KINDS[kind], "--dtype", "float16"]
        assert run("index", indexes["corpus"], "--index", idx, *flags, "--quiet") == 0
        out = tmp_path / f"{kind}-before.parquet"
        assert run("search", idx, indexes["queries"], "--out", out, "--k", "25") == 0
        runs[kind, "before"] = pq.read_table(out)
        assert run("delete", idx, "--ids", "d00010", "d00011", "d00031") == 0
        out = tmp_path / f"{kind}-deleted.parquet"
        assert run("search", idx, indexes["queries"], "--out", out, "--k", "25") == 0
        runs[kind, "deleted"] = pq.read_table(out)
        assert run("compact", idx) == 0
        out = tmp_path / f"{kind}.parquet"
        assert run("search", idx, indexes["queries"], "--out", out, "--k", "25") == 0
        runs[kind, "compacted"] = pq.read_table(out)
    for stage in ("before", "deleted", "compacted"):
        assert runs["fields-sharded", stage].equals(runs["fields", stage]), stage
    capsys.readouterr()


def test_options_that_cannot_apply_are_named(indexes, tmp_path, capsys) -> None:
    out = tmp_path / "run.parquet"
    capsys.readouterr()
    # --ray with --field: never silently dropped (P4); --shards with --field builds a sharded
    # multi-field collection (issue 26), the kind "fields-sharded" every test here covers.
    fresh = tmp_path / "fresh"
    argv = ["index", indexes["corpus"], "--index", fresh, "--field", "emb=embedding:embedding"]
    assert run(*argv, "--ray", "--quiet") == 2
    _one_error_line(capsys, "--ray")
    assert not fresh.exists()
    assert run(*argv, "--shards", "3", "--quiet") == 0
    assert json.loads((fresh / "shards.json").read_text())["shard_kind"] == "fields"
    # --field into a sharded index, --shards into a fields index.
    assert run("index", indexes["corpus"], "--index", indexes["sharded"], *KINDS["fields"]) == 2
    _one_error_line(capsys, "--field", "sharded")
    assert run("index", indexes["corpus"], "--index", indexes["fields"], "--shards", "3") == 2
    _one_error_line(capsys, "multi-field index")
    # --ray search on a fields index (was silently ignored).
    assert run("search", indexes["fields"], indexes["queries"], "--out", out, "--ray") == 2
    _one_error_line(capsys, "--ray")
    # Field flags on a sharded index (P20).
    for flags, named in (
        (["--fusion", "weighted"], "--fusion"),
        (["--fields", "emb"], "--fields"),
        (["--weights", "emb=1"], "--weights"),
        (["--preset", "text-only"], "--preset"),
    ):
        assert run("search", indexes["sharded"], indexes["queries"], "--out", out, *flags) == 2
        _one_error_line(capsys, named, "sharded")
    assert not out.exists()


def test_api_build_index_with_num_shards(indexes, tmp_path) -> None:
    got = latemm.build_index(indexes["corpus"], tmp_path / "api", num_shards=3)
    assert isinstance(got, ShardManifest) and got.num_shards == 3 and sum(got.documents) == 60
    again = latemm.build_index(indexes["corpus"], tmp_path / "api")  # adds to it: keeps N
    assert again.num_shards == 3 and sum(again.documents) == 60
    a = latemm.search(tmp_path / "api", indexes["queries"], k=10)
    # the one index stored as shards store by default: res4 under the codebook they share
    # (latemm.index.pipeline.shard_codebook); 60 pages, so every centroid is probed on both sides
    latemm.build_index(indexes["corpus"], tmp_path / "one")
    b = latemm.search(tmp_path / "one", indexes["queries"], k=10)
    assert a.equals(b)
    # fields= with num_shards: a sharded multi-field collection (issue 26, fields x shards).
    collection = latemm.build_index(
        indexes["corpus"], tmp_path / "f", fields={"e": "embedding:embedding"}, num_shards=2
    )
    assert collection.num_shards == 2 and sum(collection.documents) == 60
    assert read_manifest(tmp_path / "api").generation == 2


def test_api_build_index_keeps_each_kind_as_the_cli_does(indexes, tmp_path) -> None:
    """latemm.build_index follows latemm index's rule (``latemm.index.collection.index_route``): a
    folder keeps its kind, and a request it cannot take is an error naming the option."""
    from index_store.errors import InputError
    from latemm.index.fields import FieldsManifest

    fields = tmp_path / "fields"
    latemm.build_index(indexes["corpus"], fields, fields={"emb": "embedding:embedding"})
    # Neither encoder= nor fields=: the corpus goes into the fields it records (as the CLI).
    again = latemm.build_index(indexes["corpus"], fields)
    assert isinstance(again, FieldsManifest) and again.names == ["emb"]
    a = latemm.search(fields, indexes["queries"], k=10)
    b = latemm.search(indexes["fields"], indexes["queries"], k=10)
    assert a.equals(b)
    for target, request, named in (
        (indexes["sharded"], dict(fields={"e": "embedding:embedding"}), "--field"),
        (fields, dict(num_shards=3), "--shards"),
        (fields, dict(encoder="x", fields={"e": "bm25"}), "not both"),
    ):
        with pytest.raises(InputError, match=named):
            latemm.build_index(indexes["corpus"], target, **request)


@pytest.mark.slow
def test_rerank_on_every_kind(indexes, tmp_path_factory, tmp_path, capsys) -> None:
    """--rerank through the CLI on each kind (a tiny Qwen2-VL from a config): the sharded run
    equals the plain one (reranked on the coordinator after the merge)."""
    pytest.importorskip("torchvision")
    from tests.latemm.tiny_models import build_qwen2_vl

    model = build_qwen2_vl(tmp_path_factory.mktemp("qwen2vl"))
    runs = {}
    for kind in KINDS:
        out = tmp_path / f"{kind}.parquet"
        argv = ["search", indexes[kind], indexes["queries"], "--out", out, "--quiet"]
        rerank = ["--rerank", model, "--rerank-depth", "4", "--rerank-template", "yesno"]
        assert run(*argv, *rerank) == 0, kind
        table = pq.read_table(out)
        assert table.column("rerank_score").null_count == 4 * (10 - 4), kind
        runs[kind] = table.select(["query_id", "doc_id", "rank", "rerank_score"])
    assert runs["sharded"].equals(runs["plain"])
    capsys.readouterr()


def test_rerank_on_shards_reads_page_files_only_under_allow_files(tmp_path, capsys) -> None:
    """The reranker on a sharded index reads page images by the same --allow-files policy as
    on one index (issue 30 B4): a path outside it is refused, one inside it is read."""
    pytest.importorskip("torchvision")
    from tests.latemm.test_file_reads import _image_index
    from tests.latemm.tiny_models import build_qwen2_vl, png_bytes

    qwen = build_qwen2_vl(tmp_path / "qwen2vl")
    pages = tmp_path / "pages"
    pages.mkdir()
    paths = [str(pages / f"{i}.png") for i in range(3)]
    for i, path in enumerate(paths):
        Path(path).write_bytes(png_bytes(32, 32, i))
    _image_index(tmp_path, ["/dev/zero", *paths[1:]])
    idx = tmp_path / "sharded"
    assert run("index", tmp_path / "c.parquet", "--index", idx, "--shards", "2", "--quiet") == 0
    out = tmp_path / "r.parquet"
    argv = ["search", idx, tmp_path / "q.parquet", "--out", out, "--quiet", "--rerank", qwen]
    assert run(*argv, "--rerank-depth", "3") == 2
    assert "image file /dev/zero not read: pass --allow-files" in capsys.readouterr().err
    _image_index(tmp_path, paths)  # the same ids, every page a file under pages/
    idx = tmp_path / "sharded2"
    assert run("index", tmp_path / "c.parquet", "--index", idx, "--shards", "2", "--quiet") == 0
    argv[1] = idx
    assert run(*argv, "--rerank-depth", "3", "--allow-files", pages) == 0
    assert pq.read_table(out).column("rerank_score").null_count == 0
    capsys.readouterr()
