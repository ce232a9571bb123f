"""latemm on a local Ray cluster: encoding through Ray Data equals encoding in-process, a
4-shard index served by Ray actors returns exactly one index's top-k, and dead workers or
actors lose, duplicate and hide nothing, and a killed driver leaves no Ray process behind.
One local cluster serves the module; the tests that load MiniLM in Ray's encoder actors are
slow (-m slow), the others run in the default suite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

import latemm  # noqa: E402
from latemm.cli import main  # noqa: E402
from latemm.data.io import Columns, read_batches  # noqa: E402
from latemm.encoders.base import Encoder, MultiVectors  # noqa: E402
from latemm.index.pipeline import encode_corpus  # noqa: E402
from latemm.index.sharded import read_manifest  # noqa: E402
from latemm.retrieval.retriever import Retriever  # noqa: E402
from latemm.runs.distributed import (  # noqa: E402
    ShardUnavailableError,
    connect,
    encode_ray,
    load_named_encoder,
)
from latemm.runs.jobs import open_retriever  # noqa: E402
from tests.helpers import DIM, write_corpus, write_queries  # noqa: E402
from tests.latemm.tiny_models import WORDS  # noqa: E402

N_TEXTS = 48


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for this module (2 CPUs, no dashboard, a 100 MiB object store),
    shut down after its last test so the rest of the suite has the machine to itself."""
    yield connect("local", num_cpus=2, object_store_memory=100 * 2**20)
    ray.shutdown()


def write_texts(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(3, 30)))) for _ in range(n)]
    pq.write_table(
        pa.table({"doc_id": [f"t{i}" for i in range(n)], "text": texts, "year": list(range(n))}),
        path,
        row_group_size=16,
    )


def vectors_by_id(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for batch in read_batches(path, columns=Columns()):
        assert batch.vectors is not None and batch.offsets is not None
        for i, doc_id in enumerate(batch.ids):
            assert doc_id not in out, f"{doc_id} written twice"
            out[doc_id] = batch.vectors[batch.offsets[i] : batch.offsets[i + 1]]
    return out


def assert_same_vectors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for doc_id, vectors in a.items():
        # Different batch compositions and thread counts reorder float sums in the model.
        np.testing.assert_allclose(vectors, b[doc_id], rtol=0, atol=2e-5, err_msg=doc_id)


@pytest.mark.slow  # MiniLM in every encoder actor
def test_encoding_through_ray_equals_encoding_in_process(cluster, tmp_path) -> None:
    corpus = tmp_path / "texts.parquet"
    write_texts(corpus, N_TEXTS)
    encoder = load_named_encoder(latemm.minilm_path())
    encode_corpus(corpus, tmp_path / "local.parquet", encoder=encoder, progress=False)
    rows = encode_ray(
        corpus, tmp_path / "ray", encoder=latemm.minilm_path(), workers=2, batch_size=8
    )
    assert rows == N_TEXTS
    assert_same_vectors(vectors_by_id(tmp_path / "local.parquet"), vectors_by_id(tmp_path / "ray"))
    metadata = pq.read_table(tmp_path / "ray").select(["doc_id", "year"]).sort_by("doc_id")
    assert metadata.column("year").to_pylist() == [
        int(d[1:]) for d in metadata.column("doc_id").to_pylist()
    ]


class ExitOnFirstBatch(Encoder):
    """The real encoder, in a worker that dies (os._exit) on its first batch, once per test:
    the marker file records that the crash happened."""

    def __init__(self, inner: Encoder, marker: Path) -> None:
        self.inner, self.marker, self.info = inner, marker, inner.info

    def encode_documents(self, items, **options) -> MultiVectors:  # type: ignore[no-untyped-def]
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return self.inner.encode_documents(items, **options)

    def encode_queries(self, items, **options) -> MultiVectors:  # type: ignore[no-untyped-def]
        return self.inner.encode_queries(items, **options)


class DiesOnce:
    """Picklable loader for the Ray workers."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self) -> Encoder:
        return ExitOnFirstBatch(load_named_encoder(latemm.minilm_path()), self.marker)


@pytest.mark.slow  # MiniLM in every encoder actor
def test_a_worker_killed_mid_encode_loses_and_duplicates_nothing(cluster, tmp_path) -> None:
    corpus = tmp_path / "texts.parquet"
    write_texts(corpus, N_TEXTS, seed=3)
    marker = tmp_path / "crashed"
    rows = encode_ray(corpus, tmp_path / "ray", encoder=DiesOnce(marker), workers=2, batch_size=8)
    assert marker.exists(), "no worker died: the test did not test anything"
    assert rows == N_TEXTS
    encoder = load_named_encoder(latemm.minilm_path())
    encode_corpus(corpus, tmp_path / "local.parquet", encoder=encoder, progress=False)
    assert_same_vectors(vectors_by_id(tmp_path / "local.parquet"), vectors_by_id(tmp_path / "ray"))


@pytest.fixture(scope="module")
def indexes(cluster, tmp_path_factory) -> tuple[Path, Path, Path, int]:
    """A precomputed-embedding corpus as one index (in-process) and as 4 shards built on Ray."""
    tmp = tmp_path_factory.mktemp("ray-index")
    corpus, queries = tmp / "corpus.parquet", tmp / "queries.parquet"
    n = 500
    write_corpus(corpus, n)
    write_queries(queries, 16)
    single, sharded = tmp / "single", tmp / "sharded"
    # float16 on both sides: the FDE first stage of each shard scores a page as the one index
    # does at every candidate count (res4 shards on Ray: test_ray_shards_share_one_codebook)
    for folder, flags in ((single, []), (sharded, ["--ray", "--shards", "4"])):
        args = ["index", str(corpus), "--index", str(folder), "--dtype", "float16", *flags]
        assert main([*args, "--quiet"]) == 0
    return queries, single, sharded, n


def test_four_shards_on_ray_return_exactly_one_index_top_k(indexes, tmp_path) -> None:
    queries, single, sharded, n = indexes
    manifest = read_manifest(sharded)
    assert manifest.num_shards == 4 and sum(manifest.documents) == n
    assert min(manifest.documents) > 0
    rng = np.random.default_rng(5)
    qs = [rng.standard_normal((4, DIM)).astype(np.float32) for _ in range(16)]
    one = Retriever(single).search_embeddings(qs, k=25, candidates=n)
    four = open_retriever(sharded, ray="local").search_embeddings(qs, k=25, candidates=n)
    assert (one.doc_ids == four.doc_ids).all()
    np.testing.assert_array_equal(one.scores, four.scores)
    np.testing.assert_array_equal(one.fde_scores, four.fde_scores)
    runs = {}
    for name, idx, extra in (("one", single, []), ("ray", sharded, ["--ray"])):
        out = tmp_path / f"{name}.parquet"
        args = ["search", str(idx), str(queries), "--out", str(out), "--k", "10", "--quiet"]
        assert main(args + ["--candidates", str(n)] + extra) == 0
        runs[name] = pq.read_table(out)
    assert runs["one"].equals(runs["ray"])


def test_ray_shards_share_one_codebook(cluster, tmp_path) -> None:
    """Shards built on Ray store the default res4 under one codebook, the one an in-process
    build of the same corpus trains (drawn from the user's file, not from the shards'
    partitions), so over every page they rank as the unsharded index."""
    from index_store import Index

    corpus, n = tmp_path / "corpus.parquet", 300
    write_corpus(corpus, n)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["index", str(corpus), "--index", str(single), "--quiet"]) == 0
    args = ["index", str(corpus), "--index", str(sharded), "--ray", "--shards", "3", "--quiet"]
    assert main(args) == 0
    trained = Index.open(single).trained_codebook()
    assert trained is not None
    for folder in sorted((sharded / "shards").iterdir()):
        shard = Index.open(folder)
        assert shard.config.dtype == "res4" and shard.trained_codebook() is not None
        np.testing.assert_array_equal(shard.trained_codebook().values, trained.values)
    rng = np.random.default_rng(7)
    qs = [rng.standard_normal((4, DIM)).astype(np.float32) for _ in range(8)]
    one = Retriever(single, refine_depth=n).search_embeddings(qs, k=10, candidates=n)
    three = open_retriever(sharded, ray="local", refine_depth=n).search_embeddings(
        qs, k=10, candidates=n
    )
    assert (one.doc_ids == three.doc_ids).all()
    np.testing.assert_allclose(three.scores, one.scores, rtol=1e-6)


def test_dead_shard_actor_is_restarted_or_named(indexes) -> None:
    _, single, sharded, n = indexes
    rng = np.random.default_rng(6)
    qs = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(4)]
    expected = Retriever(single).search_embeddings(qs, k=10, candidates=n)
    retriever = open_retriever(sharded, ray="local")
    actors = list(retriever.searcher._actors.actors.values())  # one per shard, in order
    ray.kill(actors[1], no_restart=False)  # dies; Ray restarts it and retries the call
    again = retriever.search_embeddings(qs, k=10, candidates=n)
    assert (again.doc_ids == expected.doc_ids).all()
    ray.kill(actors[2], no_restart=True)  # gone for good: the search must fail, naming it
    with pytest.raises(ShardUnavailableError, match="shard shard-0002's actor died"):
        retriever.search_embeddings(qs, k=10, candidates=n)
    retriever.close()


@pytest.mark.slow  # MiniLM in every encoder actor
def test_index_text_corpus_on_ray_records_the_encoder(cluster, tmp_path) -> None:
    corpus = tmp_path / "texts.parquet"
    write_texts(corpus, N_TEXTS, seed=7)
    idx, local = tmp_path / "idx", tmp_path / "local"
    minilm = latemm.minilm_path()
    base = ["--encoder", minilm, "--shards", "3", "--quiet"]
    assert main(["index", str(corpus), "--index", str(idx), "--ray", "--workers", "2", *base]) == 0
    assert main(["index", str(corpus), "--index", str(local), *base]) == 0
    assert read_manifest(idx).config.encoder["name_or_path"] == minilm
    # The recorded encoder encodes the queries; both builds give the same ranking.
    a = latemm.search(idx, ["revenue growth chart", "what model shows the data"], k=8)
    b = latemm.search(local, ["revenue growth chart", "what model shows the data"], k=8)
    assert a.column("doc_id").to_pylist() == b.column("doc_id").to_pylist()
    np.testing.assert_allclose(
        a.column("score").to_numpy(), b.column("score").to_numpy(), rtol=0, atol=1e-4
    )
    # Re-running resumes: nothing is added twice.
    assert main(["index", str(corpus), "--index", str(idx), "--ray", *base]) == 0
    assert sum(read_manifest(idx).documents) == N_TEXTS


# The driver of the P13 test: a local cluster serving a 2-shard index from Ray actors, then
# nothing until it is killed.
DRIVER = """
import sys, time
from latemm.runs.jobs import open_retriever
retriever = open_retriever(sys.argv[1], ray="local")
print("serving", flush=True)
time.sleep(600)
"""
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path) -> None:
    """Issue 30 P13: SIGKILL the process that started a local cluster; within a bounded wait
    none of the processes it started (the agents and the shard actors included) is alive."""
    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "idx"
    write_corpus(corpus, 40)
    assert main(["index", str(corpus), "--index", str(idx), "--shards", "2", "--quiet"]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path])}
    # "local" means a cluster of this driver's own, even where RAY_ADDRESS names another one
    # (which the clean-up must never touch).
    env["RAY_ADDRESS"] = "127.0.0.1:9"
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(idx)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "serving"
        deadline = time.monotonic() + 60
        while True:  # the agents start after the raylet: wait until both are up
            started = _descendants(driver.pid)
            names = " ".join(_cmdline(p) for p in started)
            if all(agent in names for agent in AGENTS) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert all(agent in names for agent in AGENTS), names
        assert names.count("ray::ShardServer") == 2, names
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        # The agents alone wait 60 s on the dead GCS: 20 s tells cleaned up from left behind.
        deadline = time.monotonic() + 20
        while (alive := [p for p in started if _alive(p)]) and (time.monotonic() < deadline):
            time.sleep(0.5)
        assert not alive, [f"{p.pid} {_cmdline(p)}" for p in alive]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


EXITING_DRIVER = """
import time
from latemm.runs import distributed

ray = distributed.connect("local", num_cpus=1)
ray.get(ray.put(1))
# What interpreter shutdown may do before the process is gone: close the watchdog's pipe while
# the driver still holds its session's log files open for writing.
for watchdog in distributed._WATCHDOGS:
    watchdog.stdin.close()
time.sleep(8)
print("alive", flush=True)
"""


def test_the_watchdog_never_ends_its_own_driver(tmp_path) -> None:
    """The watchdog of a local cluster sees end of file on its pipe when the driver's pipe is
    closed, which at interpreter shutdown can come before the driver has exited (the full test
    suite was ended by SIGTERM after its summary): it ends Ray's processes, never the driver."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *sys.path])}
    driver = subprocess.run(
        [sys.executable, "-c", EXITING_DRIVER],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert driver.returncode == 0, (driver.returncode, driver.stderr[-2000:])
    assert driver.stdout.strip() == "alive"
