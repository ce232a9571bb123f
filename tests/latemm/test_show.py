"""`latemm show --heatmap`: patch-level similarity maps from the index's vision encoder, checked
against the reference model and rendered in headless Chromium."""

from __future__ import annotations

import io
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from latemm.cli import main
from latemm.encoders import load_encoder
from tests.latemm.tiny_models import build_colpali, build_colqwen2

BUILDERS = {"colpali": build_colpali, "colqwen2": build_colqwen2}


def gray_page(width: int, height: int, seed: int) -> bytes:
    """A grey page of random 7-pixel blocks: structure for the model, no red of its own."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (height // 7 + 1, width // 7 + 1), dtype=np.uint8)
    gray = np.kron(blocks, np.ones((7, 7), dtype=np.uint8))[:height, :width]
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(buffer, format="PNG")
    return buffer.getvalue()


PAGES = [gray_page(84, 56, 0), gray_page(56, 112, 1), gray_page(70, 70, 2)]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def checkpoint(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def test_similarity_maps_equal_the_reference_model(checkpoint) -> None:
    import transformers

    encoder = load_encoder(str(checkpoint))
    maps = encoder.similarity_maps("total revenue growth", PAGES)
    config = transformers.AutoConfig.from_pretrained(checkpoint)
    model_class = getattr(transformers, encoder.model.__class__.__name__)
    model = model_class.from_pretrained(checkpoint).eval()
    processor = transformers.AutoProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        q_inputs = processor.process_queries(text=["total revenue growth"], return_tensors="pt")
        query = model(**q_inputs).embeddings[0][q_inputs["attention_mask"][0].bool()].numpy()
        for page, got in zip(PAGES, maps, strict=True):
            inputs = processor.process_images(
                images=[Image.open(io.BytesIO(page)).convert("RGB")], return_tensors="pt"
            )
            emb = model(**inputs).embeddings[0]
            image_token = (
                config.vlm_config.image_token_id
                if config.model_type == "colqwen2"
                else config.vlm_config.image_token_index
            )
            patches = emb[inputs["input_ids"][0] == image_token].numpy()
            assert got.size == len(patches)
            if "image_grid_thw" in inputs:  # the grid follows the page's aspect ratio
                _, rows, cols = inputs["image_grid_thw"][0].tolist()
                assert got.shape == (rows // 2, cols // 2)
            np.testing.assert_allclose(
                got.reshape(-1), (patches @ query.T).max(axis=1), rtol=1e-4, atol=1e-5
            )


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.heatmaps: list[str] = []
        self.pages: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            (self.heatmaps if attributes.get("class") == "heatmap" else self.pages).append(
                attributes["src"]
            )


def test_show_heatmap_end_to_end_and_in_chromium(checkpoint, tmp_path, capsys) -> None:
    corpus, queries = tmp_path / "corpus.parquet", tmp_path / "queries.parquet"
    pq.write_table(
        pa.table({"doc_id": ["a", "b", "c"], "image": PAGES, "source": ["x", "y", "z"]}), corpus
    )
    pq.write_table(pa.table({"query_id": ["q1"], "text": ["chart of the revenue"]}), queries)
    idx, run, page = tmp_path / "idx", tmp_path / "run.parquet", tmp_path / "q1.html"
    assert (
        main(["index", str(corpus), "--index", str(idx), "--encoder", str(checkpoint), "--quiet"])
        == 0
    )
    assert main(["search", str(idx), str(queries), "--out", str(run), "--quiet"]) == 0
    show = ["show", str(run), "--index", str(idx), "--query", "q1", "--out", str(page)]
    assert main([*show, "--heatmap"]) == 2
    assert "a heat map needs the query's text" in capsys.readouterr().err
    assert main([*show, "--heatmap", "--queries", str(queries)]) == 0
    parser = Collect()
    parser.feed(page.read_text())
    assert len(parser.pages) == len(parser.heatmaps) == 3
    assert all(src.startswith("data:image/jpeg;base64,") for src in parser.heatmaps)
    assert parser.heatmaps[0] != parser.pages[0]  # the overlay changed the thumbnail

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The page drew its thumbnails: the screenshot holds more than the white background and
    # text, and the heat maps' red overlay shows (red well above green and blue).
    assert (pixels.sum(axis=2) < 700).mean() > 0.02
    reddish = (pixels[..., 0] > 150) & (pixels[..., 0] - pixels[..., 1:].max(axis=2) > 60)
    assert reddish.mean() > 0.002


def test_heatmap_needs_a_vision_encoder(tmp_path, capsys) -> None:
    from tests.helpers import write_corpus, write_queries

    write_corpus(tmp_path / "corpus.parquet", 20)
    write_queries(tmp_path / "queries.parquet", 2)
    idx, run = tmp_path / "idx", tmp_path / "run.parquet"
    assert main(["index", str(tmp_path / "corpus.parquet"), "--index", str(idx), "--quiet"]) == 0
    assert (
        main(["search", str(idx), str(tmp_path / "queries.parquet"), "--out", str(run), "--quiet"])
        == 0
    )
    code = main(
        [
            "show",
            str(run),
            "--index",
            str(idx),
            "--query",
            "q0",
            "--heatmap",
            "--out",
            str(tmp_path / "x.html"),
        ]
    )
    assert code == 2
    assert "--heatmap needs an index built with a vision encoder" in capsys.readouterr().err
