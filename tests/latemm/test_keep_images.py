"""A text encoder's index stores the page text, source and page, not the page images (1.74 GB of
JPEGs for 10k 10-K pages in issue #32), unless --keep-images; an image encoder's keeps them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store import Index
from latemm.cli import main
from tests.latemm.test_show_report import _png
from tests.latemm.tiny_models import build_colbert_pylate


@pytest.fixture(scope="module")
def colbert(tmp_path_factory):
    return build_colbert_pylate(tmp_path_factory.mktemp("colbert"))


def test_text_index_keeps_images_only_when_asked(colbert, tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"p{i}" for i in range(6)],
                "text": [f"revenue growth in year {2000 + i}" for i in range(6)],
                "image": [_png(i) * 20 for i in range(6)],  # padded: images dominate the size
                "source": ["a.pdf"] * 6,
                "page": list(range(1, 7)),
            }
        ),
        corpus,
    )
    sizes = {}
    for name, extra in (("lean", []), ("kept", ["--keep-images"])):
        idx = tmp_path / name
        build = ["index", str(corpus), "--index", str(idx), "--encoder", str(colbert), "--quiet"]
        assert main([*build, *extra]) == 0
        capsys.readouterr()
        meta = Index.open(idx).get("p3").metadata
        assert meta["text"] == "revenue growth in year 2003" and meta["page"] == 4
        assert ("image" in meta) == (name == "kept")
        assert main(["info", str(idx)]) == 0
        sizes[name] = json.loads(capsys.readouterr().out)["page_content_bytes"]
    assert sizes["lean"] * 5 < sizes["kept"]
    # show still renders the lean index's pages, from their text
    queries, run = tmp_path / "q.parquet", tmp_path / "run.parquet"
    pq.write_table(pa.table({"query_id": ["q"], "text": ["revenue growth"]}), queries)
    assert main(["search", str(tmp_path / "lean"), str(queries), "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "page.html"
    show = ["show", str(run), "--index", str(tmp_path / "lean"), "--query", "q", "--out", str(out)]
    assert main([*show, "--queries", str(queries)]) == 0
    page = out.read_text()
    assert "<mark>revenue</mark> <mark>growth</mark> in year" in page and "<img" not in page


def test_pages_of_a_lean_index_are_rendered_from_their_source_pdf(colbert, tmp_path, capsys):
    """An index without page images still shows them, and the reranker still reads them: the
    row's source PDF, found under --allow-files, is rendered at its page (issue #32 item 4)."""
    from PIL import Image

    from latemm.retrieval.retriever import read_pages

    pytest.importorskip("pypdfium2")
    (tmp_path / "pdfs").mkdir()
    shades = [Image.new("RGB", (200, 260), (40 * i, 90, 200 - 30 * i)) for i in range(6)]
    shades[0].save(tmp_path / "pdfs" / "a.pdf", save_all=True, append_images=shades[1:])
    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "lean"
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"p{i}" for i in range(6)],
                "text": [f"revenue growth in year {2000 + i}" for i in range(6)],
                "source": ["a.pdf"] * 6,
                "page": list(range(1, 7)),
            }
        ),
        corpus,
    )
    build = ["index", str(corpus), "--index", str(idx), "--encoder", str(colbert), "--quiet"]
    assert main(build) == 0
    pages = read_pages(Index.open(idx), ["p3"], [tmp_path / "pdfs"])
    with Image.open(__import__("io").BytesIO(pages["p3"].image)) as image:
        pixel = image.convert("RGB").getpixel((50, 50))  # page 4's shade, through JPEG
        assert max(abs(a - b) for a, b in zip(pixel, (120, 90, 110), strict=True)) <= 3
    assert read_pages(Index.open(idx), ["p3"])["p3"].image is None  # no folder: nothing read
    queries, run = tmp_path / "q.parquet", tmp_path / "run.parquet"
    pq.write_table(pa.table({"query_id": ["q"], "text": ["revenue growth"]}), queries)
    assert main(["search", str(idx), str(queries), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "page.html"
    show = ["show", str(run), "--index", str(idx), "--query", "q", "--out", str(out)]
    assert main([*show, "--allow-files", str(tmp_path / "pdfs")]) == 0
    assert out.read_text().count("<img") == 6
    assert main(show) == 0  # without the folder: text only, no file read
    assert "<img" not in out.read_text()
