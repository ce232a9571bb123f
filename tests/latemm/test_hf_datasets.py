"""latemm.data.hf_datasets: ViDoRe v3 converted with every column kept, and Hugging Face dataset
folders (save_to_disk, data/*.parquet shards) read by the commands as they are."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

datasets = pytest.importorskip("datasets")
PIL = pytest.importorskip("PIL.Image")

from latemm.cli import main  # noqa: E402
from latemm.data.io import count_rows, open_dataset  # noqa: E402
from latemm.data.loaders import convert, detect_format  # noqa: E402
from latemm.runs.metrics import load_qrels  # noqa: E402


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    PIL.new("RGB", (8, 8), (shade, shade, shade)).save(buffer, format="PNG")
    return buffer.getvalue()


def _v3_parts(markdown: bool):
    """corpus, queries, qrels with ViDoRe v3's column names and types, as its public loading
    code declares them (vidore/vidore_v3_* queries and qrels Features): ids int64, an Image
    feature, ``LargeList`` string lists, bounding boxes as a large list of
    {annotator, x1, x2, y1, y2} structs."""
    features = datasets.Features(
        {
            "corpus_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "doc_id": datasets.Value("string"),
            "page_number_in_doc": datasets.Value("int64"),
            **({"markdown": datasets.Value("string")} if markdown else {}),
        }
    )
    rows = {
        "corpus_id": [0, 1, 2],
        "image": [{"bytes": _png(s), "path": None} for s in (10, 120, 240)],
        "doc_id": ["report_2023", "report_2023", "handbook"],
        "page_number_in_doc": [1, 2, 7],
    }
    if markdown:
        rows["markdown"] = ["# Revenue\n2023: 5M", "## Costs table", "Safety rules"]
    corpus = datasets.Dataset.from_dict(rows, features=features)
    queries = datasets.Dataset.from_dict(
        {
            "query_id": [0, 1],
            "query": ["What was the revenue in 2023?", "Which safety rules apply?"],
            "language": ["english", "french"],
            "query_types": [["extractive", "numerical"], ["open-ended"]],
            "query_format": ["question", "question"],
            "content_type": [["table"], ["text"]],
            "raw_answers": [["5M", "5 million"], ["the handbook's rules"]],
            "query_generator": ["human", "synthetic"],
            "query_generation_pipeline": ["manual", "pipeline-a"],
            "source_type": ["report", "handbook"],
            "query_type_for_generation": ["extractive", "open-ended"],
            "answer": ["5M", "the handbook's rules"],
        },
        features=datasets.Features(
            {
                "query_id": datasets.Value("int64"),
                "query": datasets.Value("string"),
                "language": datasets.Value("string"),
                "query_types": datasets.LargeList(datasets.Value("string")),
                "query_format": datasets.Value("string"),
                "content_type": datasets.LargeList(datasets.Value("string")),
                "raw_answers": datasets.LargeList(datasets.Value("string")),
                "query_generator": datasets.Value("string"),
                "query_generation_pipeline": datasets.Value("string"),
                "source_type": datasets.Value("string"),
                "query_type_for_generation": datasets.Value("string"),
                "answer": datasets.Value("string"),
            }
        ),
    )
    box = {name: datasets.Value("int64") for name in ("annotator", "x1", "x2", "y1", "y2")}
    qrels = datasets.Dataset.from_dict(
        {
            "query_id": [0, 1],
            "corpus_id": [0, 2],
            "score": [2, 1],
            "content_type": [["table"], ["text"]],
            "bounding_boxes": [[{"annotator": 1, "x1": 1, "x2": 30, "y1": 2, "y2": 40}], []],
        },
        features=datasets.Features(
            {
                "query_id": datasets.Value("int64"),
                "corpus_id": datasets.Value("int64"),
                "score": datasets.Value("int64"),
                "content_type": datasets.LargeList(datasets.Value("string")),
                "bounding_boxes": datasets.LargeList(box),
            }
        ),
    )
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def _write(parts, root, layout: str):
    for name, dataset in parts.items():
        if layout == "save_to_disk":
            dataset.save_to_disk(str(root / name))
        else:  # the hub's layout: <config>/<split>-00000-of-00001.parquet
            (root / name).mkdir(parents=True)
            dataset.to_parquet(str(root / name / "test-00000-of-00001.parquet"))
    (root / "README.md").write_text("---\nconfigs: [corpus, queries, qrels]\n---\n")


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet_shards"])
@pytest.mark.parametrize("markdown", [False, True], ids=["v3", "v3.1"])
def test_vidore_v3_round_trip(tmp_path, layout, markdown):
    parts = _v3_parts(markdown)
    source = tmp_path / "vidore_v3"
    _write(parts, source, layout)
    assert detect_format(source) == "vidore-v3"
    out = convert(source, tmp_path / "out")
    assert (out.documents, out.num_queries, out.judgements) == (3, 2, 2)

    corpus = pq.read_table(out.corpus).to_pylist()
    for page, original in zip(
        corpus, parts["corpus"].with_format("arrow")[:].to_pylist(), strict=True
    ):
        assert page["doc_id"] == str(original["corpus_id"])
        assert page["image"]["bytes"] == original["image"]["bytes"]
        assert page["source_doc_id"] == original["doc_id"]
        assert page["page_number_in_doc"] == original["page_number_in_doc"]
        assert page.get("text") == original.get("markdown")  # v3.1's OCR markdown is the text

    queries = pq.read_table(out.queries).to_pylist()
    for query, original in zip(queries, parts["queries"].to_list(), strict=True):
        assert query["query_id"] == str(original["query_id"])
        assert query["text"] == original["query"]
        for kept in ("language", "query_types", "query_format", "answer"):
            assert query[kept] == original[kept]

    assert load_qrels(out.qrels) == {"0": {"0": 2}, "1": {"2": 1}}
    judged = pq.read_table(out.qrels.with_suffix(".parquet")).to_pylist()
    assert load_qrels(out.qrels.with_suffix(".parquet")) == load_qrels(out.qrels)
    for judgement, original in zip(judged, parts["qrels"].to_list(), strict=True):
        assert judgement["bounding_boxes"] == original["bounding_boxes"]
        assert judgement["content_type"] == original["content_type"]


def test_dataset_folders_are_read_without_conversion(tmp_path):
    parts = _v3_parts(markdown=True)
    parts["corpus"].save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"test": parts["corpus"]}).save_to_disk(str(tmp_path / "saved_dict"))
    (tmp_path / "repo" / "data").mkdir(parents=True)
    parts["corpus"].select([0, 1]).to_parquet(
        str(tmp_path / "repo/data/test-00000-of-00002.parquet")
    )
    parts["corpus"].select([2]).to_parquet(str(tmp_path / "repo/data/test-00001-of-00002.parquet"))
    (tmp_path / "repo" / "README.md").write_text("a dataset card, not Parquet\n")
    for folder in ("saved", "saved_dict", "repo"):
        table = open_dataset(tmp_path / folder).to_table()
        assert table.column("corpus_id").to_pylist() == [0, 1, 2], folder
        assert table.column("markdown").to_pylist() == parts["corpus"]["markdown"], folder
        assert count_rows(tmp_path / folder) == 3


def test_saved_dataset_dict_with_several_splits_needs_one(tmp_path):
    corpus = _v3_parts(markdown=False)["corpus"]
    datasets.DatasetDict({"test": corpus, "dev": corpus}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ValueError, match="splits test, dev: point at one of them"):
        open_dataset(tmp_path / "two")


def test_latemm_index_reads_a_saved_dataset(tmp_path, capsys):
    """``latemm index`` over a save_to_disk folder, ids and text remapped, no conversion."""
    from tests.latemm.tiny_models import build_colbert_pylate

    model = build_colbert_pylate(tmp_path / "colbert")
    corpus = _v3_parts(markdown=True)["corpus"]
    # v3's own doc_id (the source document) would clash with latemm's: `latemm convert` renames
    # it; a dataset without one is indexed as it is
    corpus.remove_columns("doc_id").save_to_disk(str(tmp_path / "saved"))
    argv = ["index", str(tmp_path / "saved"), "--index", str(tmp_path / "idx"), "--quiet"]
    argv += ["--encoder", str(model), "--id-column", "corpus_id", "--text-column", "markdown"]
    assert main(argv) == 0
    from index_store import Index

    assert sorted(Index.open(tmp_path / "idx").doc_ids()) == ["0", "1", "2"]


def test_vidore_v3_missing_column_names_the_part(tmp_path):
    parts = _v3_parts(markdown=False)
    parts["queries"] = parts["queries"].rename_column("query", "question")
    _write(parts, tmp_path / "v3", "parquet_shards")
    with pytest.raises(ValueError, match="queries: missing ViDoRe v3 column\\(s\\) 'query'"):
        convert(tmp_path / "v3", tmp_path / "out")
