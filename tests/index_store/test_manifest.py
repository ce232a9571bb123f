"""The manifest is a typed record that round-trips; one error hierarchy from fde up."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fde
import index_store
from fde import FDEConfig, FDEInputError, encode_documents
from index_store import Index, IndexConfig, InputError, create
from index_store.manifest import Manifest


def test_manifest_round_trips_and_counts_keep_their_keys(tmp_path) -> None:
    path = tmp_path / "i"
    with create(path, IndexConfig(dim=4, dtype="int8")) as writer:
        writer.commit()  # an empty index is written at its first commit
        created = json.loads((path / "manifest.json").read_text())
        writer.add(["a", "b"], [np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)])
        writer.commit()
        writer.delete(["a"])
        writer.reject([{"doc_id": "z", "source": "s", "row": 3, "reason": "blank page"}])
        writer.commit()
    committed = json.loads((path / "manifest.json").read_text())
    assert created["counts"] == {"documents": 0, "vectors": 0, "segments": 0}
    assert committed["counts"] == {"documents": 1, "vectors": 5, "segments": 1}
    manifest = Manifest.from_dict(committed, path / "manifest.json")
    assert manifest.to_dict() == committed
    assert manifest == Index.open(path).manifest
    (segment,) = manifest.segments
    assert segment.num_deleted == 1 and segment.deleted is not None
    assert {f.file for f in segment.files} == {
        "fde.faiss",
        "meta.parquet",
        "offsets.npy",
        "scales.npy",
        "vectors.npy",
    }


def test_one_error_hierarchy_from_fde_up() -> None:
    assert index_store.InputError is fde.errors.InputError
    assert issubclass(FDEInputError, InputError) and issubclass(FDEInputError, ValueError)
    with pytest.raises(FDEInputError) as err:
        encode_documents([np.ones((2, 4), np.float32), np.ones((2, 5))], FDEConfig(dimension=4))
    assert err.value.item == 1
    assert err.value.reason.startswith("has vectors of dimension 5")
    with pytest.raises(InputError, match="num_repetitions must be a positive int"):
        FDEConfig(dimension=4, num_repetitions=0)


def test_fde_errors_name_the_row_and_id_from_data(tmp_path) -> None:
    with create(tmp_path / "i", IndexConfig(dim=4)) as writer:
        with pytest.raises(InputError) as err:
            writer.add(["x", "y"], [np.ones((2, 4)), np.ones((2, 3))], source="c.parquet")
    assert err.value.item == 1
    assert str(err.value).startswith("c.parquet: row 1, doc_id 'y' has vectors of dimension 3")
