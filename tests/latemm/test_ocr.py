"""OCR at ingest (latemm.data.ocr, latemm.data.ingest): reading order, pages drawn with known text
read back through ``latemm ingest --ocr``, ``auto`` leaving text-layer pages alone, resuming an
interrupted ingest without OCR-ing finished pages again, and each bad input named by file and
page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFont

import latemm.data.ingest as ingest
import latemm.data.ocr as ocr
from latemm.cli import main
from latemm.data.ocr import OcrLine, parse_tesseract_tsv, reading_order

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
QUARTER = "Quarterly revenue grew by eleven percent"
NOTE = "Shipping costs fell in March"
needs_rapidocr = pytest.mark.skipif(
    not ocr.engine_available("rapidocr"), reason="rapidocr-onnxruntime is not installed"
)


def drawn_page(lines: list[str], *, size: tuple[int, int] = (640, 420)) -> Image.Image:
    """A white page with ``lines`` drawn in black, one under the other, in a 26 px sans font
    (not much wider than high: the detector scales the short side up to 736 px)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(FONT), 26) if FONT.exists() else ImageFont.load_default(26)
    for i, line in enumerate(lines):
        draw.text((24, 24 + 48 * i), line, fill="black", font=font)
    return image


def handmade_pdf(pages: list[str | None]) -> bytes:
    """A PDF whose pages carry ``pages`` as a text layer (Helvetica); None makes that page's
    entry in the page tree point at an object that does not exist (a corrupt page)."""
    objects: dict[int, bytes] = {}
    kids = []
    number = 3
    for text in pages:
        page = number
        number += 2
        kids.append(page if text is not None else 999)
        if text is None:
            continue
        stream = f"BT /F1 14 Tf 20 150 Td ({text}) Tj ET".encode()
        objects[page] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 200] /Contents {page + 1} 0 R "
            "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> "
            ">> >> >>"
        ).encode()
        objects[page + 1] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    refs = " ".join(f"{k} 0 R" for k in kids)
    objects[2] = f"<< /Type /Pages /Kids [{refs}] /Count {len(kids)} >>".encode()
    out = b"%PDF-1.4\n"
    offsets = {}
    for key in sorted(objects):
        offsets[key] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (key, objects[key])
    size = max(objects) + 1
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for key in range(1, size):
        out += b"%010d 00000 n \n" % offsets[key] if key in offsets else b"0000000000 65535 f \n"
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)


def cer(found: str, expected: str) -> float:
    """Character error rate over the texts with whitespace runs collapsed to one space."""
    from rapidfuzz.distance import Levenshtein

    found, expected = " ".join(found.split()), " ".join(expected.split())
    return Levenshtein.distance(found, expected) / len(expected)


def rows(path: Path) -> list[dict]:
    return pq.read_table(
        path, columns=["doc_id", "text", "text_source", "ocr_confidence"]
    ).to_pylist()


def line(x0: float, y0: float, x1: float, text: str) -> OcrLine:
    return OcrLine(x0, y0, x1, y0 + 20, text, 0.9)


def test_reading_order_reads_columns_one_after_the_other() -> None:
    """A full-width title over two columns whose rows line up exactly, then a footer: each column
    is read whole, never line by line across the gutter."""
    lines = [
        line(300, 130, 560, "right 3"),
        line(20, 10, 560, "Title across both columns"),
        line(20, 70, 280, "left 1"),
        line(300, 70, 560, "right 1"),
        line(20, 100, 280, "left 2"),
        line(300, 100, 560, "right 2"),
        line(20, 130, 280, "left 3"),
        line(200, 300, 380, "page 7"),
    ]
    assert reading_order(lines) == [
        ["Title across both columns"],
        ["left 1", "left 2", "left 3"],
        ["right 1", "right 2", "right 3"],
        ["page 7"],
    ]
    # Pieces of one row (a label and its value) stay on one row, left to right.
    row = [line(20, 10, 100, "Total:"), line(110, 12, 200, "42")]
    assert reading_order(row) == [["Total: 42"]]
    assert reading_order([]) == [] and ocr.page_text([]).confidence is None


def test_tesseract_tsv_words_become_lines() -> None:
    header = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
    tsv = "\n".join(
        [
            header,
            "4\t1\t1\t1\t1\t0\t10\t10\t200\t20\t-1\t",
            "5\t1\t1\t1\t1\t1\t10\t10\t80\t20\t96\tHello",
            "5\t1\t1\t1\t1\t2\t100\t12\t110\t18\t90\tworld",
            "5\t1\t2\t1\t1\t1\t10\t60\t50\t20\t80\tnext",
        ]
    )
    lines = parse_tesseract_tsv(tsv)
    assert [(x.text, x.x0, x.y0, x.x1, x.y1) for x in lines] == [
        ("Hello world", 10, 10, 210, 30),
        ("next", 10, 60, 60, 80),
    ]
    assert lines[0].confidence == pytest.approx(0.93)


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="the tesseract binary is absent")
def test_tesseract_engine_reads_a_drawn_page() -> None:
    engine = ocr.open_engine("tesseract")
    assert cer(ocr.page_text(engine.read(drawn_page([QUARTER]))).text, QUARTER) < 0.1


@needs_rapidocr
def test_ocr_always_reads_a_drawn_page_back(tmp_path: Path, capsys) -> None:
    """A scanned page (an image-only PDF drawn with PIL) and a PNG come back as their text."""
    folder = tmp_path / "scans"
    folder.mkdir()
    drawn_page([QUARTER, NOTE]).save(folder / "scan.pdf")
    drawn_page([NOTE]).save(folder / "note.png")
    out = tmp_path / "corpus.parquet"
    argv = ["ingest", str(folder), "--out", str(out), "--ocr", "always", "--ocr-workers", "1"]
    assert main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "OCR read 2 pages (" in printed and "pages/s)" in printed and "2 ocr" in printed
    found = {row["doc_id"]: row for row in rows(out)}
    assert set(found) == {"note.png#p1", "scan.pdf#p1"}
    assert cer(found["scan.pdf#p1"]["text"], f"{QUARTER}\n{NOTE}") < 0.08, found
    assert cer(found["note.png#p1"]["text"], NOTE) < 0.08, found
    for row in found.values():
        assert row["text_source"] == "ocr" and 0.8 < row["ocr_confidence"] <= 1.0
    # The two lines are read in order, one row each.
    assert found["scan.pdf#p1"]["text"].index("Quarterly") < found["scan.pdf#p1"]["text"].index(
        "Shipping"
    )
    assert not ingest.journal_path(out).exists()


@needs_rapidocr
def test_auto_leaves_text_layer_pages_alone(tmp_path: Path, monkeypatch) -> None:
    """Under ``auto`` the engine runs on the page without a text layer only; ``never`` runs it on
    none; ``always`` keeps the layer text apart in ``layer_text``."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "report.pdf").write_bytes(handmade_pdf([QUARTER]))
    drawn_page([NOTE]).save(folder / "scan.png")
    calls = []
    read = ocr.read_image
    monkeypatch.setattr(
        ocr, "read_image", lambda engine, image: calls.append(1) or read(engine, image)
    )
    out = tmp_path / "auto.parquet"
    report = ingest.ingest_pdfs([folder], out, progress=False, ocr_workers=1)
    assert (report.ocr_pages, len(calls)) == (1, 1)
    found = {row["doc_id"]: row for row in rows(out)}
    assert found["report.pdf#p1"] == {
        "doc_id": "report.pdf#p1",
        "text": QUARTER,
        "text_source": "layer",
        "ocr_confidence": None,
    }
    assert found["scan.png#p1"]["text_source"] == "ocr"
    assert cer(found["scan.png#p1"]["text"], NOTE) < 0.08
    never = ingest.ingest_pdfs([folder], tmp_path / "never.parquet", progress=False, ocr="never")
    assert never.ocr_pages == 0 and len(calls) == 1
    assert [r["text_source"] for r in rows(tmp_path / "never.parquet")] == ["layer", "none"]
    ingest.ingest_pdfs(
        [folder / "report.pdf"],
        tmp_path / "always.parquet",
        progress=False,
        ocr="always",
        ocr_workers=1,
    )
    table = pq.read_table(tmp_path / "always.parquet").to_pylist()
    assert table[0]["text_source"] == "ocr" and table[0]["layer_text"] == QUARTER
    assert cer(table[0]["text"], QUARTER) < 0.08


@needs_rapidocr
def test_an_interrupted_ingest_resumes_without_ocr_of_finished_pages(
    tmp_path: Path, monkeypatch
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    drawn_page([QUARTER]).save(folder / "a.png")
    drawn_page([NOTE]).save(folder / "b.png")
    out = tmp_path / "corpus.parquet"
    out.write_bytes(b"the corpus from before")
    submit = ocr.OcrPool.submit
    submitted = []

    def interrupted(pool, image):
        if submitted:
            raise KeyboardInterrupt  # Ctrl-C before the second page's OCR starts
        submitted.append(image)
        return submit(pool, image)

    monkeypatch.setattr(ocr.OcrPool, "submit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest.ingest_pdfs([folder], out, progress=False, ocr_workers=1)
    assert out.read_bytes() == b"the corpus from before"  # nothing committed is lost
    journal = ingest.journal_path(out)
    assert [json.loads(x)["key"].split("|")[:2] for x in journal.read_text().splitlines()] == [
        ["rapidocr", "a.png#p1"]
    ]
    monkeypatch.setattr(ocr.OcrPool, "submit", submit)
    calls = []
    read = ocr.read_image
    monkeypatch.setattr(
        ocr, "read_image", lambda engine, image: calls.append(1) or read(engine, image)
    )
    report = ingest.ingest_pdfs([folder], out, progress=False, ocr_workers=1)
    assert (report.ocr_resumed, report.ocr_pages, len(calls)) == (1, 1, 1)
    found = {row["doc_id"]: row for row in rows(out)}
    assert cer(found["a.png#p1"]["text"], QUARTER) < 0.08
    assert cer(found["b.png#p1"]["text"], NOTE) < 0.08
    assert not journal.exists()
    # A changed page image is read again, not taken from a stale result.
    drawn_page([NOTE]).save(folder / "a.png")
    journal.write_text(
        json.dumps({"key": "rapidocr|a.png#p1|0", "text": "stale", "confidence": 1.0, "lines": 1})
        + "\n{cut sho"
    )
    report = ingest.ingest_pdfs([folder], out, progress=False, ocr_workers=1)
    assert report.ocr_resumed == 0 and "stale" not in rows(out)[0]["text"]


@needs_rapidocr
def test_bad_inputs_are_named_by_file_and_page_and_the_rest_continues(
    tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image at all")
    Image.new("RGB", (320, 120), "white").save(folder / "blank.png")
    (folder / "damaged.pdf").write_bytes(handmade_pdf([QUARTER, None]))
    frames = [drawn_page([NOTE]), drawn_page([QUARTER])]
    frames[0].save(folder / "fax.tiff", save_all=True, append_images=frames[1:])
    out = tmp_path / "corpus.parquet"
    assert main(["ingest", str(folder), "--out", str(out), "--quiet", "--ocr-workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"{folder / 'broken.png'}: cannot read as an image (" in err
    assert f"{folder / 'blank.png'}, page 1: no text found by OCR" in err
    assert f"{folder / 'damaged.pdf'}, page 2: cannot load page (" in err
    found = {row["doc_id"]: row for row in rows(out)}
    assert sorted(found) == ["blank.png#p1", "damaged.pdf#p1", "fax.tiff#p1", "fax.tiff#p2"]
    assert found["blank.png#p1"]["text"] == "" and found["blank.png#p1"]["text_source"] == "none"
    assert found["damaged.pdf#p1"]["text_source"] == "layer"
    assert cer(found["fax.tiff#p1"]["text"], NOTE) < 0.08
    assert cer(found["fax.tiff#p2"]["text"], QUARTER) < 0.08
    # Text only: the blank page has nothing to keep, and says why.
    assert (
        main(
            [
                "ingest",
                str(folder / "blank.png"),
                "--out",
                str(tmp_path / "t.parquet"),
                "--no-images",
                "--quiet",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        f"{folder / 'blank.png'}, page 1: no text layer and images are off; skipped (no text found by OCR)"
        in err
    )


def test_a_missing_engine_gives_the_install_line(tmp_path: Path, capsys, monkeypatch) -> None:
    Image.new("RGB", (64, 64), "white").save(tmp_path / "page.png")
    out = tmp_path / "corpus.parquet"
    monkeypatch.setattr(ocr, "engine_available", lambda name: False)
    monkeypatch.setattr(ingest, "engine_available", lambda name: False)
    monkeypatch.setattr(ingest, "default_engine", lambda: None)
    monkeypatch.setitem(__import__("sys").modules, "rapidocr_onnxruntime", None)
    assert main(["ingest", str(tmp_path / "page.png"), "--out", str(out), "--ocr", "always"]) == 2
    assert (
        "pip install 'rapidocr-onnxruntime' (or pip install 'latemm[ocr]')"
        in capsys.readouterr().err
    )
    assert not out.exists()
    if shutil.which("tesseract") is None:
        code = main(["ingest", str(tmp_path), "--out", str(out), "--ocr-engine", "tesseract"])
        assert code == 2 and "apt-get install tesseract-ocr" in capsys.readouterr().err
    # auto without an engine is today's behaviour, said once.
    assert main(["ingest", str(tmp_path), "--out", str(out), "--quiet"]) == 0
    assert "no OCR engine installed" in capsys.readouterr().err
    assert rows(out)[0]["text_source"] == "none"
    assert main(["ingest", str(tmp_path), "--out", str(out), "--ocr-workers", "0"]) == 2
    assert "--ocr-workers must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
@needs_rapidocr
def test_ocr_in_worker_processes_gives_the_pages_in_file_order(tmp_path: Path, capsys) -> None:
    """Two worker processes (the default on two cores; slow: each starts an engine in a fresh
    process): rows come out in file order whatever order OCR finishes in."""
    folder = tmp_path / "scans"
    folder.mkdir()
    texts = [QUARTER, NOTE, "Total assets rose to 12 billion", "Board of directors"]
    for i, text in enumerate(texts):
        drawn_page([text]).save(folder / f"page{i}.png")
    out = tmp_path / "corpus.parquet"
    assert main(["ingest", str(folder), "--out", str(out), "--ocr-workers", "2"]) == 0
    assert "OCR read 4 pages (" in capsys.readouterr().out
    found = rows(out)
    assert [r["doc_id"] for r in found] == [f"page{i}.png#p1" for i in range(4)]
    for row, text in zip(found, texts, strict=True):
        assert cer(row["text"], text) < 0.08, row


@pytest.mark.slow
@needs_rapidocr
def test_main_job_indexes_the_pages_ocr_reads(shared_data: Path, tmp_path: Path, capsys) -> None:
    """The README's ingest and index (no extra flags) on two PDFs with four image-only pages
    (test_main_job's SMALL): the pages OCR reads are indexed, and the index rejects exactly the
    pages left without text, each a page without a text layer that ingest reported."""
    import latemm
    from index_store import Index

    names = ["698bba535087fa9a7f9009e172a7f763.pdf", "3276a5b991c49cf5f9a4af0f7d6fce67.pdf"]
    folder = tmp_path / "reports"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(shared_data / "mmlongbench" / "pdfs" / name)
    corpus, index = tmp_path / "corpus.parquet", tmp_path / "idx"
    assert main(["ingest", str(folder), "--out", str(corpus), "--quiet"]) == 0
    reported = capsys.readouterr().err
    table = pq.read_table(corpus, columns=["doc_id", "text", "text_source"]).to_pylist()
    without = {r["doc_id"] for r in table if r["text_source"] == "none"}
    read = {r["doc_id"] for r in table if r["text_source"] == "ocr"}
    assert len(table) == 36 and read and len(without) + len(read) >= 4
    for doc_id in without:
        name, page = doc_id.split("#p")
        assert f"{folder / name}, page {page}: no text found by OCR" in reported
    assert (
        main(["index", str(corpus), "--index", str(index), "--encoder", latemm.minilm_path()]) == 0
    )
    rejects = Index.open(index).rejects().to_pylist()
    assert {r["doc_id"] for r in rejects} == without
    assert len(Index.open(index)) == 36 - len(without)
