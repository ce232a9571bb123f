"""Rejected rows (nothing the encoder can read): recorded at commit, one per doc_id, listed by
``Index.rejects()`` and counted in ``stats()``, checksummed like every index file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from index_store import Index, IndexConfig, IndexCorruptError, InputError, create, verify

DIM = 4


def _doc() -> list[np.ndarray]:
    return [np.ones((2, DIM), np.float32)]


def _records(*ids: str, reason: str = "blank page") -> list[dict]:
    return [
        {"doc_id": d, "source": "c.parquet", "row": i, "reason": reason} for i, d in enumerate(ids)
    ]


def test_rejects_are_written_at_commit_and_listed(tmp_path) -> None:
    path = tmp_path / "i"
    with create(path, IndexConfig(dim=DIM)) as writer:
        writer.add(["a"], _doc())
        writer.commit()
        assert writer.reject(_records("b", "c")) == 2
        assert Index.open(path).rejects().num_rows == 0  # buffered until the commit
        writer.commit()
    index = Index.open(path)
    table = index.rejects()
    assert table.schema.names == ["doc_id", "source", "row", "reason"]
    assert table.schema.field("row").type == pa.int64()
    assert table.to_pylist() == [
        {"doc_id": "b", "source": "c.parquet", "row": 0, "reason": "blank page"},
        {"doc_id": "c", "source": "c.parquet", "row": 1, "reason": "blank page"},
    ]
    assert index.stats()["rejected"] == 2
    entry = index.manifest.rejects.file
    assert (path / entry.file).stat().st_size == entry.size
    assert verify(path) == []


def test_empty_index_has_an_empty_rejects_table(tmp_path) -> None:
    with create(tmp_path / "i", IndexConfig(dim=DIM)) as writer:
        writer.add(["a"], _doc())
        writer.commit()
    index = Index.open(tmp_path / "i")
    assert index.rejects().num_rows == 0
    assert index.rejects().schema.names == ["doc_id", "source", "row", "reason"]
    assert index.stats()["rejected"] == 0


def test_later_record_replaces_earlier_and_added_ids_leave(tmp_path) -> None:
    path = tmp_path / "i"
    with create(path, IndexConfig(dim=DIM)) as writer:
        records = _records("b", "c", "d")
        records[2]["row"] = np.int64(2)  # numpy integers (a row counter) are rows too
        writer.reject(records)
        writer.commit()
        # A resumed ingest records the same rows again: no duplicates, the latest reason wins.
        writer.reject(pa.Table.from_pylist(_records("b", reason="empty text")))
        writer.commit()
        first = Index.open(path).manifest.rejects.file.file
        # c gets indexed after all (e.g. with another encoder): it leaves the rejects.
        writer.add(["c"], _doc())
        writer.commit()
        writer.compact()
    index = Index.open(path)
    assert sorted(r["doc_id"] for r in index.rejects().to_pylist()) == ["b", "d"]
    assert index.rejects().to_pylist()[-1]["reason"] == "empty text"
    assert index.stats()["rejected"] == 2
    # The replaced rejects files were garbage-collected; the current one was kept.
    files = sorted(p.name for p in path.glob("rejects-g*.parquet"))
    assert files == [index.manifest.rejects.file.file] and first not in files
    assert verify(path) == []


def test_rejects_file_damage_is_reported(tmp_path) -> None:
    path = tmp_path / "i"
    with create(path, IndexConfig(dim=DIM)) as writer:
        writer.add(["a"], _doc())
        writer.reject(_records("b"))
        writer.commit()
    (rejects_file,) = path.glob("rejects-g*.parquet")
    data = bytearray(rejects_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    rejects_file.write_bytes(bytes(data))
    (problem,) = verify(path)
    assert rejects_file.name in problem and "checksum mismatch" in problem
    with pytest.raises(IndexCorruptError, match=rejects_file.name):
        Index.open(path)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"doc_id": "a", "source": "s", "row": 1}], "reject record 0 lacks ['reason']"),
        ([{"doc_id": "", "source": "s", "row": 1, "reason": "r"}], "doc_id must be a non-empty"),
        ([{"doc_id": "a", "source": "s", "row": -1, "reason": "r"}], "row must be an int >= 0"),
        (pa.table({"doc_id": ["a"]}), "lack the column(s) ['source', 'row', 'reason']"),
    ],
)
def test_bad_reject_records_are_refused(tmp_path, records, message) -> None:
    with create(tmp_path / "i", IndexConfig(dim=DIM)) as writer:
        with pytest.raises(InputError) as err:
            writer.reject(records)
        assert message in str(err.value)
