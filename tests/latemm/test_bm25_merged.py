"""A sharded collection's BM25 field scored with merged statistics (``BM25Index.merged``):
each shard's saved matrix is rescored from its saved term frequencies and document lengths
with the collection's document frequencies, size and average length, bit for bit as one build
over every page, without re-indexing any text; builds from before the statistics were saved
fall back to re-indexing (``union``) and score the same (issue 26)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_store.errors import IndexCorruptError, IndexFormatError
from latemm.index import bm25
from latemm.index.bm25 import BM25Index, MergedBM25
from latemm.index.field_shards import index_field_shards, shard_dir
from latemm.index.fields import field_dir, index_fields, open_field, read_fields
from latemm.retrieval.field_search import FieldRetriever

SHARDS = 3
N = 400
WORDS = [f"w{i}" for i in range(120)] + ["the", "of"]  # two stop words too


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build over N pages of very different lengths (some with no indexable word) and the
    3-shard collection over the same pages."""
    tmp = tmp_path_factory.mktemp("bm25merged")
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(1, 80)))) for _ in range(N)]
    texts[3] = "the of"  # only stop words: a page of no term (length 0)
    pq.write_table(
        pa.table({"doc_id": [f"d{i:04d}" for i in range(N)], "text": texts}), tmp / "c.parquet"
    )
    index_fields(tmp / "c.parquet", tmp / "one", {"b": "bm25"}, progress=False)
    index_field_shards(
        tmp / "c.parquet", tmp / "sh", {"b": "bm25"}, num_shards=SHARDS, progress=False
    )
    queries = [" ".join(rng.choice(WORDS, int(rng.integers(1, 6)))) for _ in range(40)]
    return tmp / "one", tmp / "sh", queries + ["w1 w1 w2", "nothing here"]


def _whole(path):
    return open_field(path, read_fields(path).get("b"))


def _parts(path, *, drop_statistics=False):
    out = []
    for s in range(SHARDS):
        folder = shard_dir(path, s)
        spec = read_fields(folder).get("b")
        files = dict(spec.options["files"])
        if drop_statistics:  # as a build written before they were saved
            files.pop(bm25.TERM_FREQUENCIES)
            files.pop(bm25.DOC_LENGTHS)
        out.append(BM25Index(field_dir(folder, spec), files, tokenizer=bm25.Tokenizer()))
    return out


def _aligned(index, doc_ids, queries):
    return index.scores(queries)[:, [index.position[d] for d in doc_ids]]


def test_builds_save_their_term_frequencies_and_lengths(built) -> None:
    one, _, _ = built
    spec = read_fields(one).get("b")
    assert {bm25.TERM_FREQUENCIES, bm25.DOC_LENGTHS} <= set(spec.options["files"])
    whole = _whole(one)
    tf, lengths = whole.statistics
    matrix = whole.retriever.scores
    assert tf.shape == np.asarray(matrix["data"]).shape and tf.dtype == np.int32
    assert lengths.shape == (whole.doc_ids.size,) and lengths.min() >= 0
    assert lengths[whole.position["d0003"]] == 0
    # the counts behind the matrix: term frequencies per document sum to its length
    per_doc = np.bincount(np.asarray(matrix["indices"]), weights=tf, minlength=lengths.size)
    assert np.array_equal(per_doc.astype(np.int64), lengths.astype(np.int64))


def test_merged_statistics_score_exactly_as_one_build(built) -> None:
    one, sharded, queries = built
    whole = _whole(one)
    merged = BM25Index.merged(_parts(sharded))
    assert isinstance(merged, MergedBM25)
    assert sorted(merged.doc_ids) == sorted(whole.doc_ids)
    assert np.array_equal(_aligned(merged, whole.doc_ids, queries), whole.scores(queries))
    # and exactly as the in-memory re-index it replaces
    union = BM25Index.union(_parts(sharded))
    assert np.array_equal(
        _aligned(merged, whole.doc_ids, queries), _aligned(union, whole.doc_ids, queries)
    )


def test_hidden_pages_leave_the_statistics(built) -> None:
    """An unfinished delete's ids: out of the documents, their frequencies and the average
    length, as a build without them."""
    one, sharded, queries = built
    hidden = frozenset(f"d{i:04d}" for i in range(0, N, 9))
    without = _whole(one).without(hidden)
    merged = BM25Index.merged(_parts(sharded), hidden)
    assert isinstance(merged, MergedBM25) and not set(merged.doc_ids) & hidden
    assert np.array_equal(_aligned(merged, without.doc_ids, queries), without.scores(queries))
    assert merged.texts() == [without.texts()[without.position[d]] for d in merged.doc_ids]


def test_builds_without_statistics_are_reindexed_as_before(built) -> None:
    one, sharded, queries = built
    old = _parts(sharded, drop_statistics=True)
    assert all(p.statistics is None for p in old)
    merged = BM25Index.merged(old)
    assert isinstance(merged, BM25Index)  # union's in-memory build
    whole = _whole(one)
    assert np.array_equal(_aligned(merged, whole.doc_ids, queries), whole.scores(queries))
    mixed = [*_parts(sharded)[:2], old[2]]
    assert isinstance(BM25Index.merged(mixed), BM25Index)


def test_a_sharded_search_opens_the_merged_field(built) -> None:
    one, sharded, queries = built
    retriever = FieldRetriever(sharded, fields=["b"])
    assert isinstance(retriever.parts["b"][0], MergedBM25)
    got = retriever.search(queries, k=10)
    want = FieldRetriever(one, fields=["b"]).search(queries, k=10)
    assert got.doc_ids.tolist() == want.doc_ids.tolist()
    assert np.array_equal(got.scores, want.scores, equal_nan=True)


def test_build_records_stay_readable_by_their_checksums(built, tmp_path) -> None:
    """The statistics files are recorded with the build's other files (size and sha256), so
    ``verify`` checks them and a reader without this change ignores them."""
    _, sharded, _ = built
    spec = read_fields(shard_dir(sharded, 0)).get("b")
    folder = tmp_path / "build"
    shutil.copytree(field_dir(shard_dir(sharded, 0), spec), folder)
    assert bm25.check_build(folder, spec.options["files"], full=True) == []
    np.save(folder / bm25.DOC_LENGTHS, np.zeros(3, np.int32))  # damaged
    problems = bm25.check_build(folder, spec.options["files"], full=True)
    assert problems and bm25.DOC_LENGTHS in " ".join(problems)
    json.dumps(spec.options["files"])  # plain JSON, as fields.json holds it


def test_builds_record_their_format_and_a_newer_one_is_refused(built, tmp_path) -> None:
    one, _, _ = built
    assert read_fields(one).get("b").options["format"] == bm25.BUILD_FORMAT == 2
    path = tmp_path / "newer"
    shutil.copytree(one, path)
    payload = json.loads((path / "fields.json").read_text())
    payload["fields"][0]["options"]["format"] = bm25.BUILD_FORMAT + 1
    (path / "fields.json").write_text(json.dumps(payload))
    with pytest.raises(IndexFormatError, match="newer than this latemm reads") as caught:
        FieldRetriever(path, fields=["b"])
    assert "upgrade latemm" in str(caught.value) and "\n" not in str(caught.value)


def test_one_build_with_hidden_pages_is_merged_not_reindexed(built) -> None:
    """An unsharded field with an unfinished delete: its own statistics minus the hidden
    pages, exactly as the re-index it replaces."""
    one, _, queries = built
    whole = _whole(one)
    hidden = frozenset({"d0001", "d0002", "d0100"})
    merged = BM25Index.merged([whole], hidden)
    assert isinstance(merged, MergedBM25)
    without = whole.without(hidden)
    assert np.array_equal(_aligned(merged, without.doc_ids, queries), without.scores(queries))
    assert BM25Index.merged([whole]) is whole  # nothing hidden: the build as it is


def test_statistics_that_do_not_match_the_matrix_are_refused(built, tmp_path) -> None:
    _, sharded, _ = built
    parts = _parts(sharded)
    tf, lengths = parts[1].statistics
    parts[1]._statistics = (tf, lengths[:-1])  # as if the file were another build's
    with pytest.raises(IndexCorruptError, match="does not match the build's score matrix"):
        BM25Index.merged(parts)
