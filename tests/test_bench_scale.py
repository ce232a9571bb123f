"""experiments/bench_scale.py at a tiny size: the streamed exact top-10 is latemm's search with
every page a candidate, the index is built through the writer, and the disk check refuses."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.bench_scale import (
    MemoryMonitor,
    build,
    check_disk,
    check_memory,
    estimate_index_bytes,
    evaluate_latemm,
    exact_topk_streaming,
    index_bytes,
    make_config,
)
from experiments.synthetic import SyntheticCorpus
from index_store import Index
from latemm.retrieval.retriever import Retriever

CORPUS = SyntheticCorpus(
    tokens_per_page=40, n_concepts=256, query_tokens=8, unrelated_query_tokens=2
)
PAGES = 200


def test_streamed_exact_top10_equals_search_over_every_page(tmp_path) -> None:
    config = make_config(CORPUS, "float32", "Flat")
    with MemoryMonitor(interval=0.05) as monitor:
        built = build(tmp_path / "idx", CORPUS, config, PAGES, commit_every=64, monitor=monitor)
    assert built["commits"] == 4 and built["pages"] == PAGES
    assert monitor.peaks["start"]["peak_rss_mb"] > 0
    index = Index.open(tmp_path / "idx")
    assert len(index) == PAGES and len(index.segments) == 4
    q3, _ = CORPUS.queries(12, PAGES)
    q_off = np.arange(len(q3) + 1) * CORPUS.query_tokens
    top, scores, stats = exact_topk_streaming(
        CORPUS, PAGES, q3.reshape(-1, CORPUS.dim), q_off, chunk=48, progress=False
    )
    assert top.shape == (12, 10) and stats["queries"] == 12
    found = Retriever(index).search_embeddings(list(q3), k=10, candidates=PAGES)
    assert found.doc_ids.tolist() == [[f"p{i}" for i in row] for row in top]
    np.testing.assert_allclose(found.scores, scores, rtol=1e-5)
    rows = evaluate_latemm(
        index, q3, [[f"p{i}" for i in row] for row in top], [PAGES], batch_size=5, progress=False
    )
    assert rows[0]["recall@10"] == 1.0 and rows[0]["p95_ms"] >= rows[0]["p50_ms"] > 0


def test_exact_pass_cut_short_resumes_from_its_checkpoint(tmp_path, monkeypatch) -> None:
    import experiments.bench_scale as bench_scale

    q3, _ = CORPUS.queries(6, PAGES)
    q_flat, q_off = q3.reshape(-1, CORPUS.dim), np.arange(7) * CORPUS.query_tokens
    run = dict(chunk=16, progress=False, checkpoint_every=3)
    whole, whole_scores, _ = exact_topk_streaming(CORPUS, PAGES, q_flat, q_off, **run)
    calls, kernel = [0], bench_scale.maxsim

    def breaks_at_the_eighth_chunk(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 2 * 7:  # two products per chunk
            raise KeyboardInterrupt
        return kernel(*args, **kwargs)

    checkpoint = tmp_path / "exact.partial.npz"
    monkeypatch.setattr(bench_scale, "maxsim", breaks_at_the_eighth_chunk)
    with pytest.raises(KeyboardInterrupt):
        exact_topk_streaming(CORPUS, PAGES, q_flat, q_off, checkpoint=checkpoint, **run)
    monkeypatch.setattr(bench_scale, "maxsim", kernel)
    assert int(np.load(checkpoint)["done"]) == 6 * 16  # the last checkpoint before the break
    top, scores, stats = exact_topk_streaming(
        CORPUS, PAGES, q_flat, q_off, checkpoint=checkpoint, **run
    )
    assert stats["resumed_at_page"] == 96
    np.testing.assert_array_equal(top, whole)
    np.testing.assert_array_equal(scores, whole_scores)
    with pytest.raises(SystemExit, match="another exact pass's checkpoint"):
        exact_topk_streaming(CORPUS, PAGES, q_flat[:-1], q_off[:-1], checkpoint=checkpoint, **run)


def test_disk_estimate_counts_every_file_and_refuses_what_does_not_fit(tmp_path) -> None:
    config = make_config(CORPUS, None, None)
    with MemoryMonitor() as monitor:
        build(tmp_path / "idx", CORPUS, config, 2048, commit_every=2048, monitor=monitor)
    measured = index_bytes(tmp_path / "idx")
    stats = Index.open(tmp_path / "idx").stats()
    assert measured["manifest_files_bytes"] > stats["disk_bytes"]  # + the manifest itself
    assert sum(measured["by_file"].values()) == stats["disk_bytes"]
    # The probes (1,024 and 1,536 pages) train the first stage's codebook as this index did.
    estimate = estimate_index_bytes(CORPUS, config, 2048, tmp_path)
    assert estimate["estimated_bytes"] == pytest.approx(stats["disk_bytes"], rel=0.05)
    with pytest.raises(SystemExit, match=r"1000000 pages needs about .* GiB free; free space"):
        check_disk(tmp_path, 10.0 * 2**50, "1000000 pages")


def test_memory_check_refuses_a_first_stage_larger_than_memory() -> None:
    with pytest.raises(SystemExit, match=r"first-stage faiss files \('Flat'\) would take about"):
        check_memory(10.0 * 2**50, "Flat")
    check_memory(1.0, "Flat")


def test_exact_only_leaves_the_top10_that_a_later_run_reads(tmp_path) -> None:
    from experiments.bench_scale import (
        SyntheticCorpus,
        cached_exact,
        main,
        parse_args,
        recall_sample,
    )

    args = ["--pages", "64", "--queries", "6", "--recall-queries", "4"]
    main([*args, "--exact-only", "--index", str(tmp_path / "idx")])
    parsed = parse_args(args)
    corpus = SyntheticCorpus(seed=0)
    top, stats = cached_exact(
        tmp_path / "idx", corpus, 64, recall_sample(parsed, corpus)[1], keep=True
    )
    assert "cached" in stats and top.shape == (4, 10)
    assert not list(tmp_path.glob("*.partial.npz"))  # the finished pass leaves no checkpoint


def test_an_exact_top10_made_over_other_pages_is_refused(tmp_path) -> None:
    import json

    from experiments.bench_scale import (
        SyntheticCorpus,
        cached_exact,
        exact_cache,
        first_pages_sha256,
    )

    corpus = SyntheticCorpus(seed=0)
    sample, _ = corpus.queries(2, 64)
    cache = exact_cache(tmp_path / "idx", corpus, 64, sample)
    top = np.zeros((2, 10), np.int64)
    for digest, refused in ((first_pages_sha256(corpus), False), ("0" * 64, True)):
        stats = {"first_pages_sha256": digest}  # as bench_gpu writes it
        np.savez(cache, top=top, stats=np.array(json.dumps(stats)))
        if refused:
            with pytest.raises(SystemExit, match="computed over other pages than this machine"):
                cached_exact(tmp_path / "idx", corpus, 64, sample, keep=True)
        else:
            got, _ = cached_exact(tmp_path / "idx", corpus, 64, sample, keep=True)
            np.testing.assert_array_equal(got, top)
