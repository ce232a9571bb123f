"""`latemm eval` with several runs states the test, the threshold and every p-value next to the
significance letters, and says on stderr why its first call is slow (ranx's numba cache)."""

from __future__ import annotations

import re

import pytest

from latemm.cli import main


@pytest.mark.slow  # ranx loads numba-compiled kernels: ~10 s of CPU even when cached
def test_eval_compare_prints_p_values_test_and_legend(tmp_path, capsys) -> None:
    qrels = tmp_path / "qrels.txt"
    lines, good, bad = [], [], []
    for q in range(12):
        lines.append(f"q{q} 0 d{q} 1\n")
        good.append(f"q{q} Q0 d{q} 1 2.0 good\nq{q} Q0 x{q} 2 1.0 good\n")
        bad.append(f"q{q} Q0 x{q} 1 2.0 bad\nq{q} Q0 d{q} 2 1.0 bad\n")
    qrels.write_text("".join(lines))
    (tmp_path / "good.trec").write_text("".join(good))
    (tmp_path / "bad.trec").write_text("".join(bad))
    runs = [str(tmp_path / "good.trec"), str(tmp_path / "bad.trec")]
    assert main(["eval", *runs, str(qrels), "--metrics", "mrr@10", "ndcg@5"]) == 0
    captured = capsys.readouterr()
    assert "numba" in captured.err and "cache" in captured.err
    out = captured.out
    assert "paired two-sided Student's t-test" in out and "p < 0.01" in out
    assert re.search(r"mrr@10\s+a vs b p=0\.0000\*", out), out
    assert "0.500ᵇ" not in out and "1.000ᵇ" in out  # the better run carries b's letter
    assert main(["eval", *runs, str(qrels), "--metrics", "mrr@10", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
