"""`latemm convert QUESTIONS --out questions.parquet`: a queries file in one step from CSV, TSV,
JSON, JSON Lines or plain text; bad files are one-line errors naming the question."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from latemm.cli import main

CASES = {
    "q.csv": 'query_id,question\nq7,what was the revenue in 2020?\nq8,"who signed it, and when?"\n',
    "q.tsv": "id\ttext\nq7\twhat was the revenue in 2020?\nq8\twho signed it, and when?\n",
    "q.json": json.dumps({"q7": "what was the revenue in 2020?", "q8": "who signed it, and when?"}),
    "q.jsonl": '{"qid": "q7", "query": "what was the revenue in 2020?"}\n'
    '{"qid": "q8", "query": "who signed it, and when?"}\n',
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_questions_to_queries_parquet(tmp_path, capsys, name) -> None:
    source, out = tmp_path / name, tmp_path / "questions.parquet"
    source.write_text(CASES[name], encoding="utf-8")
    assert main(["convert", str(source), "--out", str(out)]) == 0
    assert "wrote 2 queries" in capsys.readouterr().out
    assert pq.read_table(out).to_pylist() == [
        {"query_id": "q7", "text": "what was the revenue in 2020?"},
        {"query_id": "q8", "text": "who signed it, and when?"},
    ]


def test_ids_are_made_when_absent(tmp_path, capsys) -> None:
    for name, text in [
        ("a.txt", "first question\n\nsecond one\n"),
        ("b.json", '["first question", "second one"]'),
    ]:
        (tmp_path / name).write_text(text)
        out = tmp_path / f"{name}.parquet"
        assert main(["convert", str(tmp_path / name), "--out", str(out)]) == 0
        assert pq.read_table(out).column("query_id").to_pylist() == ["q1", "q2"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("e.csv", "id,text\nq1,\n", "question 1 (id 'q1'): the question is empty"),
        ("d.csv", "id,text\nq1,a\nq1,b\n", "question 2: query id 'q1' is repeated"),
        ("k.json", '[{"answer": "x", "page": 3}]', "record 1: no question"),
        ("bad.json", "[1,", "not valid JSON"),
    ],
)
def test_bad_questions_are_one_line(tmp_path, capsys, name, text, message) -> None:
    (tmp_path / name).write_text(text)
    out = tmp_path / "out.parquet"
    assert main(["convert", str(tmp_path / name), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / name) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_ingest_progress_has_a_total(shared_data, tmp_path, capsys) -> None:
    """The ingest bar knows how many pages are coming (so it shows an ETA)."""
    pytest.importorskip("pypdfium2")
    pdf = shared_data / "mmlongbench" / "pdfs" / "watch_d.pdf"
    out = tmp_path / "corpus.parquet"
    assert main(["ingest", str(pdf), "--out", str(out), "--no-images"]) == 0
    err = capsys.readouterr().err
    assert "27/27" in err and "ingesting" in err
    assert pq.read_metadata(out).num_rows == 27
