"""`latemm info` states the disk an index takes per page, and how much of it is stored page
content (images, text, metadata), for one index and for each field of a fields index."""

from __future__ import annotations

import json

from latemm.cli import main
from tests.helpers import write_corpus


def test_info_gives_disk_per_page(tmp_path, capsys) -> None:
    corpus, idx, fidx = tmp_path / "c.parquet", tmp_path / "idx", tmp_path / "fidx"
    write_corpus(corpus, 30)
    assert main(["index", str(corpus), "--index", str(idx), "--quiet"]) == 0
    field = ["--field", "emb=embedding:embedding", "--quiet"]
    assert main(["index", str(corpus), "--index", str(fidx), *field]) == 0
    capsys.readouterr()
    assert main(["info", str(idx)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["disk_bytes_per_page"] == round(stats["disk_bytes"] / 30)
    meta = sum(p.stat().st_size for p in idx.rglob("meta.parquet"))
    assert stats["page_content_bytes"] == meta > 0
    assert stats["page_content_bytes_per_page"] == round(meta / 30)
    assert main(["info", str(fidx)]) == 0
    emb = json.loads(capsys.readouterr().out)["fields"][0]["stats"]
    assert emb["disk_bytes_per_page"] == round(emb["disk_bytes"] / 30)


def test_index_and_search_json_summaries_for_scripts(tmp_path, capsys) -> None:
    from tests.helpers import write_queries

    corpus, queries, idx = tmp_path / "c.parquet", tmp_path / "q.parquet", tmp_path / "idx"
    write_corpus(corpus, 20)
    write_queries(queries, 3)
    assert main(["index", str(corpus), "--index", str(idx), "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["added"] == summary["documents"] == 20 and summary["rejected"] == 0
    assert captured.err == ""
    run = tmp_path / "run.parquet"
    assert main(["search", str(idx), str(queries), "--out", str(run), "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["queries"] == 3 and captured.err == ""
    fidx = tmp_path / "fidx"
    build = ["index", str(corpus), "--index", str(fidx), "--field", "emb=embedding:embedding"]
    assert main([*build, "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fields"] == {"emb": 20}
