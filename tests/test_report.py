"""The experiments report renders from the committed JSON (the experiments themselves are too
long for the default suite; `python -m experiments.report --run --quick` runs them)."""

from __future__ import annotations

from experiments.report import main


def test_report_renders_every_section(tmp_path) -> None:
    out = tmp_path / "RESULTS.md"
    main(["--out", str(out)])
    text = out.read_text()
    for heading in ("## 1. The FDE", "## 3. Search", "MUVERA paper's findings", "## 6. GPU"):
        assert heading in text
    assert "| 100000 | latemm C=512 |" in text
