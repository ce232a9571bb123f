"""The experiments report: the committed RESULTS.md is exactly what the committed JSON and the
hand-written fragments in experiments/writeups/ render to, and its quick version runs every
experiment end to end (slow: `pytest -m slow tests/test_report.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import report
from experiments.report import EXPERIMENTS, main

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "experiments" / "RESULTS.md"


@pytest.fixture
def committed_results(monkeypatch) -> None:
    """Render from the repository's own JSON even where LATEMM_RESULTS points elsewhere."""
    monkeypatch.setattr(report, "RESULTS", REPO / "experiments" / "results")


def test_committed_results_md_is_what_the_report_renders(committed_results) -> None:
    rendered = report.render()
    assert rendered == COMMITTED.read_text(encoding="utf-8"), (
        "experiments/RESULTS.md differs from what experiments/report.py renders from "
        "experiments/results/*.json and experiments/writeups/*.md. Never edit RESULTS.md by "
        "hand: put hand-written text in a fragment under experiments/writeups/, then run "
        "`python -m experiments.report` and commit the result."
    )


def test_every_writeup_is_in_the_report(committed_results) -> None:
    """A fragment that no ORDER entry or section slot reads would be silently left out."""
    rendered = report.render()
    fragments = sorted(report.WRITEUPS.glob("*.md"))
    assert fragments
    missing = [
        p.name
        for p in fragments
        for piece in report._TABLE_MARK.split(p.read_text(encoding="utf-8"))[::2]
        if piece.strip() not in rendered
    ]
    assert missing == []


def test_fragment_table_marks(monkeypatch, tmp_path) -> None:
    """A `<!-- table: NAME -->` line becomes that table; a missing JSON leaves a visible note, an
    unknown name is an error naming the fragment and the known tables."""
    monkeypatch.setattr(report, "WRITEUPS", tmp_path)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (tmp_path / "note.md").write_text("Before.\n\n<!-- table: codec_probe.shannon -->\n\nAfter.\n")
    assert report.writeup("note") == (
        "Before.\n\n*(Table codec_probe.shannon not rendered: missing "
        f"{tmp_path / 'codec_probe.json'}.)*\n\nAfter."
    )
    bound = [{"bytes_per_token": 16, "rms_error_at_least": 0.16363}]
    (tmp_path / "codec_probe.json").write_text(json.dumps({"shannon_bound": bound}))
    assert report.writeup("note") == (
        "Before.\n\n| bytes per token | 16 |\n|---|---|\n"
        "| least RMS error of any code (Shannon) | 0.164 |\n\nAfter."
    )
    (tmp_path / "bad.md").write_text("<!-- table: nonsense -->\n")
    with pytest.raises(
        ValueError, match=r"bad\.md asks for table 'nonsense', which experiments/report"
    ):
        report.writeup("bad")


def test_missing_writeup_names_the_file_and_the_fix(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(report, "WRITEUPS", tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        report.writeup("7c_rescoring")
    assert str(info.value) == (
        f"{tmp_path / '7c_rescoring.md'} is missing: RESULTS.md includes it "
        "(experiments/report.py names it); restore it from git or remove its name from report.py"
    )


def test_load_takes_the_newest_of_full_and_quick(monkeypatch, tmp_path) -> None:
    """A quick run made with larger options after the full run is what the report shows, and
    `--quick` always shows the quick run."""
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (tmp_path / "x.json").write_text(json.dumps({"date": "2026-11-22 21:52:21 UTC", "run": "full"}))
    (tmp_path / "x_quick.json").write_text(
        json.dumps({"date": "2026-11-23 09:59:40 UTC", "run": "quick"})
    )
    assert report._load("x", quick=False)["run"] == "quick"
    (tmp_path / "x.json").write_text(json.dumps({"date": "2026-11-23 10:00:00 UTC", "run": "full"}))
    assert report._load("x", quick=False)["run"] == "full"
    assert report._load("x", quick=True)["run"] == "quick"
    assert report._load("y", quick=False) is None


def test_ingest_table_puts_repeated_runs_side_by_side(committed_results) -> None:
    """Section 2 reads bench_index.json and its two repeats: per-run figures, median, RSS range."""
    text = report.section_index(report._load("bench_index", quick=False))
    assert (
        "| this commit | 10000 | 926 / 1,092 / 1,031 | 1,031 | 1.82 / 1.59 / 1.67 | 1,724-1,747 | 258 | 19 |"
        in text
    )
    assert "Same runs, same size: 5.28x / 5.71x / 5.51x the baseline's pages/s" in text
    assert "Peak memory 0.99x-1.03x while the corpus grew 3x." in text


def test_report_renders_every_section(tmp_path) -> None:
    out = tmp_path / "RESULTS.md"
    main(["--out", str(out)])
    text = out.read_text()
    for heading in ("## 1. The FDE", "## 3. Search", "MUVERA paper's findings", "## 8. GPU"):
        assert heading in text
    assert "| 100000 | latemm C=512 |" in text


@pytest.mark.slow
def test_quick_report_runs_every_experiment(shared_data, tmp_path) -> None:
    """`python -m experiments.report --run --quick` with results and caches in tmp_path."""
    env = {
        **os.environ,
        "LATEMM_RESULTS": str(tmp_path / "results"),
        "LATEMM_CACHE": str(tmp_path / "cache"),
        "LATEMM_SHARED_DATA": str(shared_data),
    }
    out = tmp_path / "RESULTS.md"
    subprocess.run(
        [sys.executable, "-m", "experiments.report", "--run", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        check=True,
        timeout=3 * 3600,
    )
    written = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    assert written == sorted(f"{name}_quick.json" for name in EXPERIMENTS)
    assert "Not run yet" not in out.read_text()
