"""latemm.runs.jobs.open_retriever (one searcher for plain and sharded indexes), and the shard
servers a OneFieldRetriever is handed (``actors=``, what ``--ray`` builds on Ray actors) in
place of searching its shards in this process."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index_store.errors import InputError
from latemm.index.fields import open_field
from latemm.retrieval.field_search import OneFieldRetriever
from latemm.retrieval.retriever import Retriever
from latemm.runs.jobs import open_retriever
from tests.latemm import format_fixtures as ff


@pytest.fixture
def sharded(tmp_path) -> Path:
    path = tmp_path / "sharded"
    shutil.copytree(ff.DATA / "sharded-index", path)
    return path


class InProcessShards:
    """Serves each shard's field from this process, as one Ray actor per shard would (the
    searcher's ``actors`` hook), and records what it was asked to open."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: list[tuple[str, str, bool]] = []
        self.closed = False

    def open(self, folder: Path, spec: Any, *, legacy: bool = False) -> Any:
        self.opened.append((Path(folder).name, spec.name, legacy))
        return open_field(folder, spec, legacy=legacy)  # an Index: its phases run here

    def close(self) -> None:
        self.closed = True


def test_injected_shard_servers_merge_exactly_like_local_shards(sharded) -> None:
    queries = ff.query_vectors()["m"]
    local = OneFieldRetriever(sharded).search_embeddings(queries, k=ff.K)
    built: list[InProcessShards] = []

    def actors(root: Path) -> InProcessShards:
        built.append(InProcessShards(root))
        return built[-1]

    served = OneFieldRetriever(sharded, actors=actors, nprobe=8)
    got = served.search_embeddings(queries, k=ff.K)
    assert [b.root for b in built] == [sharded]
    assert built[0].opened == [(f"shard-{s:04d}", "default", True) for s in range(3)]
    assert got.doc_ids.tolist() == local.doc_ids.tolist()
    np.testing.assert_array_equal(got.scores, local.scores)
    served.close()
    assert built[0].closed


def test_open_retriever_is_one_searcher_for_both_kinds(sharded, tmp_path) -> None:
    assert isinstance(open_retriever(sharded), OneFieldRetriever)
    plain = tmp_path / "plain"
    shutil.copytree(ff.DATA / "fields-index" / "fields" / "m", plain)
    searcher = open_retriever(plain)  # issue 26: a plain index through the collection searcher
    assert isinstance(searcher, OneFieldRetriever)
    queries = ff.query_vectors()["m"]
    got = searcher.search_embeddings(queries, k=ff.K)
    want = Retriever(plain).search_embeddings(queries, k=ff.K)  # the one-index kernel
    np.testing.assert_array_equal(got.doc_ids, want.doc_ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    with pytest.raises(InputError, match="--ray serves a sharded index; .* is an ordinary one"):
        open_retriever(plain, ray="local")
