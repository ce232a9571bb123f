"""`latemm convert`: ViDoRe v1, ViDoRe v2 and BEIR layouts into the Parquet contract."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from latemm.cli import main
from latemm.data.io import image_bytes
from latemm.runs.metrics import load_qrels


def png(color: tuple[int, int, int]) -> dict[str, object]:
    """An image cell as Hugging Face datasets writes it: a {bytes, path} struct."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_vidore_v1_dedupes_pages_and_queries_like_the_vidore_evaluator(tmp_path, capsys) -> None:
    # Six rows over four pages: a page asked twice, a page with no query, a repeated query.
    rows = [
        ("what is the revenue?", "a.png", (255, 0, 0)),
        ("who signed it?", "b.png", (0, 255, 0)),
        (None, "c.png", (0, 0, 255)),
        ("when was it filed?", "b.png", (0, 255, 0)),
        ("what is the revenue?", "d.png", (9, 9, 9)),
        ("how many pages?", "a.png", (255, 0, 0)),
    ]
    source = tmp_path / "docvqa_test_subsampled.parquet"
    pq.write_table(
        pa.table(
            {
                "query": [r[0] for r in rows],
                "image": [png(r[2]) for r in rows],
                "image_filename": [r[1] for r in rows],
                "answer": ["x"] * len(rows),
                "page": ["1", "2", "3", "2", "4", "1"],
                "text_description": ["ocr a", "ocr b", "ocr c", "ocr b", "ocr d", "ocr a"],
            }
        ),
        source,
        row_group_size=2,  # several record batches, so deduplication spans batches
    )
    out = tmp_path / "converted"
    assert main(["convert", str(source), "--out", str(out)]) == 0
    assert "4 documents" in capsys.readouterr().out
    corpus = pq.read_table(out / "corpus.parquet")
    assert corpus.column("doc_id").to_pylist() == ["a.png", "b.png", "c.png", "d.png"]
    assert corpus.column("text").to_pylist() == ["ocr a", "ocr b", "ocr c", "ocr d"]
    assert "query" not in corpus.column_names and "answer" not in corpus.column_names
    first = Image.open(io.BytesIO(image_bytes(corpus.column("image")[0].as_py())))
    assert first.getpixel((0, 0)) == (255, 0, 0)
    queries = pq.read_table(out / "queries.parquet").to_pylist()
    assert [q["text"] for q in queries] == [
        "what is the revenue?",
        "who signed it?",
        "when was it filed?",
        "how many pages?",
    ]
    by_text = {q["text"]: q["query_id"] for q in queries}
    qrels = load_qrels(out / "qrels.txt")
    assert qrels[by_text["what is the revenue?"]] == {"d.png": 1}  # the last page it was asked of
    assert qrels[by_text["how many pages?"]] == {"a.png": 1}
    assert len(qrels) == 4


def test_vidore_v2_huggingface_layout(tmp_path) -> None:
    source = tmp_path / "esg_reports_v2"
    for part, table in {
        "corpus": pa.table(
            {
                "corpus-id": [0, 1, 2],
                "image": [png((i * 50, 0, 0)) for i in range(3)],
                "doc-id": ["r1", "r1", "r2"],
                "markdown": ["# one", "# two", "# three"],
            }
        ),
        "queries": pa.table({"query-id": [7, 8], "query": ["emissions?", "board?"]}),
        "qrels": pa.table({"query-id": [7, 7, 8], "corpus-id": [0, 2, 1], "score": [2, 1, 1]}),
    }.items():
        (source / part).mkdir(parents=True)
        pq.write_table(table, source / part / "test-00000-of-00001.parquet")
    out = tmp_path / "out"
    assert main(["convert", str(source), "--out", str(out)]) == 0
    corpus = pq.read_table(out / "corpus.parquet")
    assert corpus.column("doc_id").to_pylist() == ["0", "1", "2"]
    assert corpus.column("text").to_pylist() == ["# one", "# two", "# three"]
    assert corpus.column("doc-id").to_pylist() == ["r1", "r1", "r2"]  # metadata kept
    assert pq.read_table(out / "queries.parquet").to_pydict() == {
        "query_id": ["7", "8"],
        "text": ["emissions?", "board?"],
    }
    assert load_qrels(out / "qrels.txt") == {"7": {"0": 2, "2": 1}, "8": {"1": 1}}


def write_beir(root: Path, docs: dict[str, str], queries: dict[str, str], qrels: list[str]) -> None:
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for doc_id, text in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as fh:
        for query_id, text in queries.items():
            fh.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{line}\n" for line in qrels)
    )


def test_beir_on_the_real_vaswani_collection(shared_data, tmp_path) -> None:
    """Vaswani rewritten as a BEIR folder converts back to exactly its documents and qrels."""
    from experiments.common import read_trec_docs, read_trec_topics

    root = shared_data / "vaswani"
    docs = dict(zip(*read_trec_docs(root / "doc-text.trec"), strict=True))
    queries = dict(zip(*read_trec_topics(root / "query-text.trec"), strict=True))
    original = load_qrels(root / "qrels")
    lines = [f"{q}\t{d}\t{r}" for q, rel in original.items() for d, r in rel.items()]
    write_beir(tmp_path / "beir", docs, {**queries, "unjudged": "no qrels"}, lines)
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "beir"), "--out", str(out)]) == 0
    corpus = pq.read_table(out / "corpus.parquet")
    assert corpus.num_rows == len(docs) == 11429
    assert corpus.column("doc_id").to_pylist() == list(docs)
    converted_queries = pq.read_table(out / "queries.parquet").column("query_id").to_pylist()
    assert sorted(converted_queries) == sorted(original)  # the unjudged query is left out
    assert load_qrels(out / "qrels.txt") == original


def test_bad_sources_get_clear_errors(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["x"], "picture": [b"1"]}), bad)
    assert main(["convert", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "cannot tell its format" in capsys.readouterr().err
    assert main(["convert", str(bad), "--out", str(tmp_path / "o"), "--format", "vidore-v1"]) == 2
    assert "missing column(s) 'query', 'image', 'image_filename'" in capsys.readouterr().err
    beir = tmp_path / "beir"
    write_beir(beir, {"d1": "text"}, {"q1": "query"}, ["q1\td1\t1"])
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2"\n')
    assert main(["convert", str(beir), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "corpus.jsonl, line 2: not valid JSON" in err
    assert not (tmp_path / "o2" / "corpus.parquet").exists()
    with pytest.raises(SystemExit):
        main(["convert", str(beir), "--out", str(tmp_path / "o3"), "--format", "csv"])
