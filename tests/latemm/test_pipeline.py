"""``latemm.index.pipeline``'s build helpers: the corpus dimension is read from the first row alone,
and a first row without vectors is still refused by name."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store.errors import InputError
from latemm.data.io import Columns
from latemm.index.pipeline import first_dim


def _write(path, rows: list[list[list[float]] | None]) -> None:
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(len(rows))],
            "embedding": pa.array(rows, pa.list_(pa.list_(pa.float32()))),
        }
    )
    pq.write_table(table, path)  # one row group


def test_first_dim_reads_the_first_row_of_a_file_or_a_folder(tmp_path) -> None:
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((int(t), 5)).tolist() for t in (3, 1, 4)]
    _write(tmp_path / "corpus.parquet", rows)
    assert first_dim(tmp_path / "corpus.parquet", Columns()) == 5
    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder / "a.parquet", rows[:1])
    _write(folder / "b.parquet", rows[1:])
    assert first_dim(folder, Columns()) == 5
    renamed = pq.read_table(tmp_path / "corpus.parquet").rename_columns(["doc_id", "vecs"])
    pq.write_table(renamed, tmp_path / "renamed.parquet")
    assert first_dim(tmp_path / "renamed.parquet", Columns(embedding="vecs")) == 5


def test_first_dim_of_a_first_row_without_vectors_names_the_row(tmp_path) -> None:
    _write(tmp_path / "corpus.parquet", [None, [[1.0, 2.0]]])
    with pytest.raises(InputError, match="row 0"):
        first_dim(tmp_path / "corpus.parquet", Columns())
