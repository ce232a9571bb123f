"""A residual index's default first stage: the 5,120-dimensional FDE (k=4 SimHash bits) whose
``auto`` code is PQ640x4fs (320 bytes per document, half the float16 default's), against
oracles: the codes on disk have that width, a search through them equals brute force over the
decoded vectors, and every other dtype, explicit setting and recorded index keeps its own."""

from __future__ import annotations

import numpy as np
import pytest

from index_store import Index, IndexConfig, create, default_fde_config, verify
from index_store.config import RESIDUAL_SIMHASH_PROJECTIONS
from index_store.first_stage import CODES_FILE, MIN_TRAIN_DOCUMENTS
from index_store.store import IndexWriter
from latemm.index.pipeline import resolve_config
from latemm.retrieval.retriever import Retriever
from tests.index_store.test_codecs import _brute_force_over_decoded
from tests.index_store.test_residual_codec import _docs

DIM = 32
RESIDUAL = ("res1", "res2", "res4")
OTHERS = ("float16", "float32", "int8", "binary", "pq1", "pq2")


@pytest.mark.parametrize("dtype", RESIDUAL)
def test_residual_dtypes_default_to_the_half_fde_and_its_half_code(dtype) -> None:
    config = IndexConfig(dim=DIM, dtype=dtype)
    assert RESIDUAL_SIMHASH_PROJECTIONS == 4
    assert config.fde_config.num_simhash_projections == 4
    assert config.fde_config.num_repetitions == 20
    assert config.faiss_dimension == 20 * 16 * 16 == 5120
    assert config.faiss_factory == "PQ640x4fs"
    assert config.fde_config == default_fde_config(DIM, dtype=dtype)
    # Recorded as resolved: reopening rebuilds the same config.
    assert IndexConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("dtype", OTHERS)
def test_other_dtypes_keep_the_10240_fde_and_pq1280(dtype) -> None:
    config = IndexConfig(dim=DIM, dtype=dtype)
    assert config.fde_config == default_fde_config(DIM) == default_fde_config(DIM, dtype=dtype)
    assert config.faiss_dimension == 10240
    assert config.faiss_factory == "PQ1280x4fs"


def test_explicit_fde_and_factory_win_over_the_residual_default() -> None:
    config = IndexConfig(dim=DIM, dtype="res2", fde=default_fde_config(DIM))
    assert config.faiss_dimension == 10240 and config.faiss_factory == "PQ1280x4fs"
    config = IndexConfig(dim=DIM, dtype="res2", faiss_factory="PQ1280x4fs")
    assert config.faiss_dimension == 5120 and config.faiss_factory == "PQ1280x4fs"


def test_the_cli_config_of_a_new_residual_index_is_the_half_fde(tmp_path) -> None:
    config = resolve_config(tmp_path / "new", dim=DIM, encoder=None, dtype="res4")
    assert config.faiss_dimension == 5120 and config.faiss_factory == "PQ640x4fs"
    assert config.residual_codebook == "index"
    float16 = resolve_config(tmp_path / "new", dim=DIM, encoder=None, dtype="float16")
    assert float16.faiss_dimension == 10240
    # what latemm index builds when no --dtype is named: res4, its half FDE, its search defaults
    default = resolve_config(tmp_path / "new", dim=DIM, encoder=None)
    assert (default.dtype, default.faiss_dimension, default.first_stage) == (
        "res4",
        5120,
        "centroids",
    )


def _build(path, config: IndexConfig, n: int) -> dict[str, np.ndarray]:
    docs = _docs(21, n, 3, 7)
    ids = [f"d{i}" for i in range(n)]
    with create(path, config) as writer:
        writer.add(ids, docs)
        writer.commit(final=True)
    return dict(zip(ids, docs, strict=True))


def test_a_residual_index_stores_320_byte_codes_and_searches_as_brute_force(tmp_path) -> None:
    """Enough documents to train the FDE codebook: every document's first-stage code is 320
    bytes, and a search over all candidates equals brute force over the decoded vectors."""
    path = tmp_path / "idx"
    n = MIN_TRAIN_DOCUMENTS + 76
    config = IndexConfig(dim=DIM, dtype="res2", residual_codebook="index")
    live = _build(path, config, n)
    index = Index.open(path)
    assert index.config.faiss_factory == "PQ640x4fs" and index.config.faiss_dimension == 5120
    (segment,) = index.segments
    assert segment.dtype == "res2"
    codes = np.load(segment.path / CODES_FILE, mmap_mode="r")
    assert codes.shape == (n, 320) and codes.dtype == np.uint8
    assert verify(path) == []
    queries = _docs(22, 5, 2, 5)
    result = Retriever(index).search_embeddings(queries, k=10, candidates=len(live))
    assert [list(r) for r in result.doc_ids] == _brute_force_over_decoded(index, queries, 10)


def test_an_index_recorded_with_the_10240_fde_keeps_it_on_append(tmp_path) -> None:
    """A residual index written with the former default (k=5, PQ1280x4fs) opens unchanged and
    an append (what ``latemm index`` does into an existing folder) codes with its recorded FDE."""
    path = tmp_path / "old"
    old = IndexConfig(dim=DIM, dtype="res4", fde=default_fde_config(DIM), faiss_factory="auto")
    assert old.faiss_factory == "PQ1280x4fs"
    _build(path, old, MIN_TRAIN_DOCUMENTS)
    recorded = resolve_config(path, dim=DIM, encoder=None, dtype="res4")
    assert recorded == old and recorded.faiss_dimension == 10240
    with IndexWriter(path) as writer:  # no config: the recorded one
        writer.add(["extra"], [_docs(23, 1, 4, 5)[0]])
        writer.commit()
    index = Index.open(path)
    assert index.config == old and index.config.faiss_factory == "PQ1280x4fs"
    widths = {np.load(s.path / CODES_FILE, mmap_mode="r").shape[1] for s in index.segments}
    assert widths == {640}
    assert verify(path) == []
    result = Retriever(index).search_embeddings(_docs(24, 3, 2, 5), k=5, candidates=2000)
    assert all(len(r) == 5 for r in result.doc_ids)


def test_a_default_reopen_keeps_a_residual_index_written_with_the_former_default(tmp_path) -> None:
    """``create(path, IndexConfig(dim, dtype="res4"))`` on an index written when residual
    dtypes had the 10,240-d FDE: both first stages are the default of their day, so the index
    opens for writing with its recorded one; a first stage asked for by name still differs."""
    from index_store.errors import IndexFormatError

    path = tmp_path / "old"
    old = IndexConfig(dim=DIM, dtype="res4", fde=default_fde_config(DIM), faiss_factory="auto")
    _build(path, old, MIN_TRAIN_DOCUMENTS)
    with create(path, IndexConfig(dim=DIM, dtype="res4")) as writer:  # today's defaults
        writer.add(["extra"], [_docs(23, 1, 4, 5)[0]])
        writer.commit()
    assert Index.open(path).config == old and "extra" in Index.open(path)
    with pytest.raises(IndexFormatError, match="other settings"):
        create(path, IndexConfig(dim=DIM, dtype="res4", faiss_factory="PQ320x4fs"))
    with pytest.raises(IndexFormatError, match="other settings"):  # not a residual default
        create(path, IndexConfig(dim=DIM, dtype="res2"))
