"""Pages a named field cannot read (blank text, no vectors) are counted on stderr and recorded in
the field (row, doc_id, file, reason), so `latemm info` lists them as for an ordinary index."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latemm.cli import main


def _corpus(path, n: int = 12) -> None:
    """Every 4th page has blank text, every 5th no embedding."""
    rng = np.random.default_rng(0)
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"p{i:02d}" for i in range(n)],
                "text": ["  " if i % 4 == 0 else f"revenue growth page {i}" for i in range(n)],
                "embedding": pa.array(
                    [
                        None if i % 5 == 0 else rng.standard_normal((3, 8)).astype("f4").tolist()
                        for i in range(n)
                    ],
                    pa.list_(pa.list_(pa.float32())),
                ),
            }
        ),
        path,
    )


def test_field_rejects_are_counted_printed_and_listed_by_info(tmp_path, capsys) -> None:
    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "idx"
    _corpus(corpus)
    build = ["index", str(corpus), "--index", str(idx), "--quiet"]
    assert main([*build, "--field", "emb=embedding:embedding", "--field", "bm25=bm25"]) == 0
    err = capsys.readouterr().err
    assert "emb: 3" in err and "bm25: 3" in err and f"latemm info {idx}" in err
    assert main(["info", str(idx)]) == 0
    fields = {f["name"]: f["stats"] for f in json.loads(capsys.readouterr().out)["fields"]}
    assert fields["emb"]["documents"] == 9 and fields["emb"]["rejected"] == 3
    assert [r["doc_id"] for r in fields["emb"]["rejects"]] == ["p00", "p05", "p10"]
    assert [r["row"] for r in fields["emb"]["rejects"]] == [0, 5, 10]
    assert {r["source"] for r in fields["emb"]["rejects"]} == {str(corpus)}
    assert fields["bm25"] == {"documents": 9, "rejected": 3}
    # the temporary field corpora and their reject sidecars are gone
    assert not list((idx / "fields").glob(".corpus-*"))
    # a re-run skips the recorded rejects like committed pages: nothing added, same counts
    assert main([*build, "--field", "emb=embedding:embedding"]) == 0
    capsys.readouterr()
    assert main(["info", str(idx)]) == 0
    fields = {f["name"]: f["stats"] for f in json.loads(capsys.readouterr().out)["fields"]}
    assert fields["emb"]["documents"] == 9 and fields["emb"]["rejected"] == 3


def test_field_on_empty_error_names_the_row(tmp_path, capsys) -> None:
    corpus, idx = tmp_path / "corpus.parquet", tmp_path / "idx"
    _corpus(corpus)
    code = main(
        [
            "index",
            str(corpus),
            "--index",
            str(idx),
            "--field",
            "bm25=bm25",
            "--on-empty",
            "error",
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "row 0, doc_id 'p00'" in err and "field 'bm25'" in err and len(err.splitlines()) == 1
