"""The CLI over Parquet corpora with precomputed embeddings, and its crash safety."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index, verify
from latemm.cli import main
from tests.helpers import DIM, write_corpus, write_queries


def test_index_search_info_delete_compact_verify(tmp_path, capsys) -> None:
    corpus, queries = tmp_path / "corpus.parquet", tmp_path / "queries.parquet"
    write_corpus(corpus, 300)
    write_queries(queries, 7)
    idx, run = str(tmp_path / "idx"), tmp_path / "run.parquet"
    assert main(["index", str(corpus), "--index", idx, "--quiet", "--commit-every", "100"]) == 0
    assert (
        main(
            [
                "search",
                idx,
                str(queries),
                "--out",
                str(run),
                "--k",
                "5",
                "--trec",
                str(tmp_path / "run.trec"),
                "--quiet",
            ]
        )
        == 0
    )
    table = pq.read_table(run)
    assert table.schema.names == [
        "query_id",
        "doc_id",
        "rank",
        "score",
        "fde_score",
        "maxsim_score",
        "rerank_score",
    ]
    assert table.num_rows == 35 and table.column("rerank_score").null_count == 35
    assert (tmp_path / "run.trec").read_text().count("\n") == 35
    # where: only esg documents come back
    assert (
        main(
            [
                "search",
                idx,
                str(queries),
                "--out",
                str(run),
                "--where",
                "source = 'esg' AND year >= 2015",
                "--quiet",
            ]
        )
        == 0
    )
    ids = pq.read_table(run).column("doc_id").to_pylist()
    index = Index.open(idx)
    assert ids and all(
        index.get(i).metadata["source"] == "esg" and index.get(i).metadata["year"] >= 2015
        for i in ids
    )
    assert main(["delete", idx, "--ids", "doc-0", "doc-1"]) == 0
    assert main(["compact", idx]) == 0
    assert main(["verify", idx]) == 0
    assert main(["info", idx]) == 0
    assert '"documents": 298' in capsys.readouterr().out
    # Re-running the same ingest adds nothing (doc-0/1 were deleted and come back).
    assert main(["index", str(corpus), "--index", idx, "--quiet"]) == 0
    assert len(Index.open(idx)) == 300


def test_bad_corpus_errors_name_file_and_row(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "embedding": [[[1.0] * DIM]]}), bad)
    assert main(["index", str(bad), "--index", str(tmp_path / "i"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no 'doc_id' column (columns: id, embedding)" in err and "--id-column" in err
    assert (
        main(["index", str(bad), "--index", str(tmp_path / "i"), "--quiet", "--id-column", "id"])
        == 0
    )
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(
        pa.table(
            {"doc_id": ["x", "y"], "embedding": [[[1.0] * DIM], [[1.0] * DIM, [1.0] * (DIM - 1)]]}
        ),
        ragged,
    )
    assert main(["index", str(ragged), "--index", str(tmp_path / "i"), "--quiet"]) == 2
    assert (
        "ragged.parquet, row 1, doc_id 'y': embedding vectors have different dimensions"
        in capsys.readouterr().err
    )
    assert len(Index.open(tmp_path / "i")) == 1  # nothing committed was lost


def _index_cmd(corpus: Path, idx: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "latemm.cli",
        "index",
        str(corpus),
        "--index",
        str(idx),
        "--quiet",
        "--commit-every",
        "150",
        "--batch-size",
        "50",
    ]


def crash_and_resume(tmp_path: Path, kills: int, n_docs: int, seed: int = 0) -> None:
    """Kill `latemm index` with SIGKILL at random moments, check the committed state after
    each kill, resume, and compare the finished index with a clean build."""
    from latemm.retrieval.retriever import Retriever

    corpus = tmp_path / "corpus.parquet"
    write_corpus(corpus, n_docs)
    idx = tmp_path / "crashy"
    rng = np.random.default_rng(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Time a clean run to spread the kills over it.
    start = time.perf_counter()
    subprocess.run(_index_cmd(corpus, tmp_path / "clean"), check=True, env=env, capture_output=True)
    duration = time.perf_counter() - start
    killed = 0
    previous = 0
    for _ in range(3 * kills):  # a run that finishes before its kill starts over, up to 3x
        if killed == kills:
            break
        proc = subprocess.Popen(
            _index_cmd(corpus, idx), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(float(rng.uniform(0.3, 1.0)) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        elif proc.returncode == 0 and killed < kills:
            # Resumed to the end before the kill came (the machine was faster than the timed
            # run): start from scratch, and aim earlier so the remaining kills land mid-ingest
            # (a clean run timed on a busy machine took 64 s and later runs 4 s).
            assert verify(idx) == []
            shutil.rmtree(idx)
            previous = 0
            duration /= 2
            continue
        proc.wait()
        if (idx / "manifest.json").is_file():
            assert verify(idx) == []
            index = Index.open(idx)
            ids = list(index.doc_ids())
            assert len(ids) == len(set(ids)), "a document was committed twice"
            assert len(ids) >= previous, "a committed document was lost"
            previous = len(ids)
    assert killed > 0
    resumed = subprocess.run(_index_cmd(corpus, idx), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, f"the resume after {killed} kills failed:\n{resumed.stderr}"
    crashy, clean = Index.open(idx), Index.open(tmp_path / "clean")
    assert (
        sorted(crashy.doc_ids())
        == sorted(clean.doc_ids())
        == sorted(f"doc-{i}" for i in range(n_docs))
    )
    queries = [
        np.random.default_rng(9).standard_normal((4, DIM)).astype(np.float32) for _ in range(5)
    ]
    a = Retriever(crashy).search_embeddings(queries, k=10)
    b = Retriever(clean).search_embeddings(queries, k=10)
    assert (a.doc_ids == b.doc_ids).all()
    np.testing.assert_array_equal(a.scores, b.scores)


def test_sigkill_during_index_loses_and_duplicates_nothing(tmp_path) -> None:
    crash_and_resume(tmp_path, kills=20, n_docs=2000)


@pytest.mark.slow
def test_sigkill_many_times(tmp_path) -> None:
    crash_and_resume(tmp_path, kills=200, n_docs=6000, seed=1)


def test_killed_search_resumes_to_the_same_run(tmp_path) -> None:
    corpus, queries = tmp_path / "corpus.parquet", tmp_path / "queries.parquet"
    write_corpus(corpus, 400)
    write_queries(queries, 3000)
    idx = str(tmp_path / "idx")
    assert main(["index", str(corpus), "--index", idx, "--quiet"]) == 0
    clean = tmp_path / "clean.parquet"
    assert (
        main(["search", idx, str(queries), "--out", str(clean), "--quiet", "--batch-size", "100"])
        == 0
    )
    out = tmp_path / "run.parquet"
    cmd = [
        sys.executable,
        "-m",
        "latemm.cli",
        "search",
        idx,
        str(queries),
        "--out",
        str(out),
        "--quiet",
        "--batch-size",
        "100",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / ".run.parquet.parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(list(parts.glob("part-*.parquet"))) >= 3
    assert (
        main(["search", idx, str(queries), "--out", str(out), "--quiet", "--batch-size", "100"])
        == 0
    )
    assert pq.read_table(out).equals(pq.read_table(clean))
    assert not parts.exists()


def test_search_refine_depth_on_a_residual_index_and_its_error_elsewhere(tmp_path, capsys) -> None:
    """``latemm search --refine-depth`` decodes a residual index's best candidates by their
    centroids (a run of k rows per query); on a float16 index it is a one-line error, exit 2."""
    corpus, queries = tmp_path / "corpus.parquet", tmp_path / "queries.parquet"
    write_corpus(corpus, 300)
    write_queries(queries, 4)
    res4, plain = str(tmp_path / "res4"), str(tmp_path / "plain")
    assert main(["index", str(corpus), "--index", res4, "--dtype", "res4", "--quiet"]) == 0
    assert {s.dtype for s in Index.open(res4).segments} == {"res4"}
    out = tmp_path / "run.parquet"
    argv = ["search", res4, str(queries), "--out", str(out), "--k", "5", "--refine-depth", "16"]
    assert main([*argv, "--quiet"]) == 0
    run = pq.read_table(out).to_pydict()
    assert len(run["query_id"]) == 4 * 5 and len(set(run["query_id"])) == 4
    assert main(["index", str(corpus), "--index", plain, "--dtype", "float16", "--quiet"]) == 0
    capsys.readouterr()
    argv = ["search", plain, str(queries), "--out", str(tmp_path / "p.parquet")]
    assert main([*argv, "--refine-depth", "16", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no residual codes" in err and err.count("\n") == 1 and "Traceback" not in err
