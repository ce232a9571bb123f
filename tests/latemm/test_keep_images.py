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
