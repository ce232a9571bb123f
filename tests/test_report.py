"""The experiments report: it renders from the committed JSON, and its quick version runs every
experiment end to end (slow: `pytest -m slow tests/test_report.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.report import EXPERIMENTS, main

REPO = Path(__file__).resolve().parents[1]


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
