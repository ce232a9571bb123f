"""latemm.jobs.open_retriever, and the shard servers a ShardedRetriever is handed (``actors=``,
what ``--ray`` builds on Ray actors) in place of searching its shards in this process."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index_store.errors import InputError
from latemm.jobs import open_retriever
from latemm.retriever import Retriever, SearchResult
from latemm.sharded import ShardedRetriever, ShardManifest, open_shard
from tests.latemm import format_fixtures as ff


@pytest.fixture
def sharded(tmp_path) -> Path:
    path = tmp_path / "sharded"
    shutil.copytree(ff.DATA / "sharded-index", path)
    return path


class InProcessShards:
    """Serves each shard from its own ``Retriever``, as one Ray actor per shard would, and
    records what it was built with."""

    def __init__(self, root: Path, manifest: ShardManifest, **options: Any) -> None:
        self.built_with = (root, manifest.num_shards, options)
        self.retrievers = [
            Retriever(open_shard(root, s), **options) for s in range(manifest.num_shards)
        ]
        self.closed = False

    def search_embeddings(self, flat: Any, offsets: Any, **kwargs: Any) -> list[SearchResult]:
        return [r.search_embeddings(flat, offsets, **kwargs) for r in self.retrievers]

    def close(self) -> None:
        self.closed = True


def test_injected_shard_servers_merge_exactly_like_local_shards(sharded) -> None:
    queries = ff.query_vectors()["m"]
    local = ShardedRetriever(sharded).search_embeddings(queries, k=ff.K)
    built: list[InProcessShards] = []

    def actors(root: Path, manifest: ShardManifest, **options: Any) -> InProcessShards:
        built.append(InProcessShards(root, manifest, **options))
        return built[-1]

    served = ShardedRetriever(sharded, actors=actors, nprobe=8)
    got = served.search_embeddings(queries, k=ff.K)
    assert [b.built_with for b in built] == [(sharded, 3, {"nprobe": 8})]
    assert got.doc_ids.tolist() == local.doc_ids.tolist()
    np.testing.assert_array_equal(got.scores, local.scores)
    served.close()
    assert built[0].closed


def test_open_retriever_picks_the_kind(sharded, tmp_path) -> None:
    assert isinstance(open_retriever(sharded), ShardedRetriever)
    plain = tmp_path / "plain"
    shutil.copytree(ff.DATA / "fields-index" / "fields" / "m", plain)
    assert isinstance(open_retriever(plain), Retriever)
    with pytest.raises(InputError, match="--ray serves a sharded index; .* is an ordinary one"):
        open_retriever(plain, ray="local")
