"""The MLLM reranker against probabilities computed by hand from the same model's logits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from index_store.errors import InputError
from latemm.encoders import Page
from latemm.retrieval.reranker import MLLMReranker, PromptTemplate, rerank_order
from tests.latemm.tiny_models import build_qwen2_vl, png_bytes

pytest.importorskip("torchvision")  # Qwen2-VL's processor needs its video processor


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2vl"))


DOCS = [
    Page(image=png_bytes(60, 40, 0)),
    Page(text="total revenue chart"),
    Page(image=png_bytes(30, 90, 1), text="growth"),
]
QUERY = "what is the revenue"


def _by_hand(folder, template: str, document: Page, model=None) -> float:
    """Build the template's prompt independently, run one unpadded forward pass, read logits."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = (
        model if model is not None else AutoModelForImageTextToText.from_pretrained(folder).eval()
    )
    processor = AutoProcessor.from_pretrained(folder)
    doc = ([{"type": "image"}] if document.image else []) + (
        [{"type": "text", "text": document.text}] if document.text else []
    )
    images = [Image.open(io.BytesIO(document.image)).convert("RGB")] if document.image else None
    if template == "monoqwen":
        prompt = f"Assert the relevance of the previous image document to the following query, answer True or False. The query is: {QUERY}"
        messages = [{"role": "user", "content": doc + [{"type": "text", "text": prompt}]}]
        answers = ("True", "False")
    elif template == "qwen3-vl-reranker":
        system = 'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        prompt = f"<Instruct>: Given a search query, retrieve relevant candidates that answer the query.\n<Query>: {QUERY}\n<Document>:"
        messages = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "text", "text": prompt}] + doc},
        ]
        answers = ("yes", "no")
    else:
        prompt = f"Does the document above answer the query? Answer yes or no.\nQuery: {QUERY}"
        messages = [{"role": "user", "content": doc + [{"type": "text", "text": prompt}]}]
        answers = ("yes", "no")
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    ids = [processor.tokenizer.encode(a, add_special_tokens=False)[0] for a in answers]
    if template == "qwen3-vl-reranker":
        return float(torch.sigmoid(logits[ids[0]] - logits[ids[1]]))
    return float(torch.softmax(logits[ids], dim=0)[0])


@pytest.mark.parametrize("template", ["monoqwen", "qwen3-vl-reranker", "yesno"])
def test_scores_equal_hand_computed_probabilities(qwen, template) -> None:
    reranker = MLLMReranker(str(qwen), template=template, batch_size=3)
    batched = reranker.score(QUERY, DOCS)
    expected = [_by_hand(qwen, template, d) for d in DOCS]
    np.testing.assert_allclose(batched, expected, rtol=1e-4, atol=1e-5)
    # Left padding and masks: a score does not depend on batch size or batch neighbours.
    single = MLLMReranker(str(qwen), template=template, batch_size=1).score(QUERY, DOCS)
    np.testing.assert_allclose(single, batched, rtol=1e-4, atol=1e-5)
    reordered = reranker.score(QUERY, DOCS[::-1])[::-1]
    np.testing.assert_allclose(reordered, batched, rtol=1e-4, atol=1e-5)


def test_multi_token_answers_are_refused(qwen) -> None:
    template = PromptTemplate(name="wordy", user="{query}", answers=("very relevant", "no"))
    with pytest.raises(InputError, match="the answer 'very relevant' is 2 tokens"):
        MLLMReranker(str(qwen), template=template)
    with pytest.raises(InputError, match="unknown rerank template 'nope'"):
        MLLMReranker(str(qwen), template="nope")


def test_cache_returns_stored_scores_without_a_forward_pass(qwen, tmp_path, monkeypatch) -> None:
    reranker = MLLMReranker(str(qwen), cache=tmp_path / "scores.sqlite")
    first = reranker.score(QUERY, DOCS, doc_keys=["a", "b", "c"])
    calls = []
    monkeypatch.setattr(
        reranker, "_forward", lambda pairs: calls.append(pairs) or np.zeros(len(pairs))
    )
    again = reranker.score(QUERY, DOCS, doc_keys=["a", "b", "c"])
    np.testing.assert_array_equal(first, again)
    assert calls == []


def test_rerank_order_breaks_ties_by_maxsim_and_fuses_by_rrf() -> None:
    rerank = np.array([0.9, 0.9, 0.1, 0.5])
    maxsim = np.array([1.0, 3.0, 9.0, 2.0])
    assert rerank_order(rerank, maxsim).tolist() == [1, 0, 3, 2]
    fused = rerank_order(rerank, maxsim, fusion="rrf")
    assert fused[0] == 1  # first by rerank and second by maxsim


def test_search_cli_reranks_top_pages(qwen, tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latemm.cli import main

    rng = np.random.default_rng(0)
    n = 12
    pq.write_table(
        pa.table(
            {
                "doc_id": [f"p{i}" for i in range(n)],
                "embedding": [rng.standard_normal((3, 8)).tolist() for _ in range(n)],
                "image": [png_bytes(40, 40, i) for i in range(n)],
                "text": [f"page {i} revenue chart" for i in range(n)],
            }
        ),
        tmp_path / "corpus.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "query_id": ["q0", "q1"],
                "embedding": [rng.standard_normal((2, 8)).tolist() for _ in range(2)],
                "text": ["what is the revenue", "total growth"],
            }
        ),
        tmp_path / "queries.parquet",
    )
    index, run = str(tmp_path / "idx"), tmp_path / "run.parquet"
    assert main(["index", str(tmp_path / "corpus.parquet"), "--index", index, "--quiet"]) == 0
    args = [
        "search",
        index,
        str(tmp_path / "queries.parquet"),
        "--out",
        str(run),
        "--k",
        "5",
        "--quiet",
    ]
    assert (
        main(
            [
                *args,
                "--rerank",
                str(qwen),
                "--rerank-depth",
                "4",
                "--rerank-cache",
                str(tmp_path / "c.sqlite"),
            ]
        )
        == 0
    )
    table = pq.read_table(run).to_pylist()
    for qid in ("q0", "q1"):
        rows = [r for r in table if r["query_id"] == qid]
        assert len(rows) == 5
        reranked = [r["rerank_score"] for r in rows[:4]]
        assert all(s is not None for s in reranked) and rows[4]["rerank_score"] is None
        assert reranked == sorted(reranked, reverse=True)
        assert [r["score"] for r in rows[:4]] == reranked

    # A query with only its embedding cannot be reranked: the error names the row and the fix.
    pq.write_table(
        pa.table(
            {
                "query_id": ["q0", "q1"],
                "embedding": [rng.standard_normal((2, 8)).tolist() for _ in range(2)],
                "text": ["what is the revenue", None],
            }
        ),
        tmp_path / "bare.parquet",
    )
    args[2] = str(tmp_path / "bare.parquet")
    args[4] = str(tmp_path / "bare_run.parquet")
    assert main([*args, "--rerank", str(qwen), "--rerank-depth", "4"]) == 2
    err = capsys.readouterr().err
    assert "bare.parquet, row 1, query_id 'q1': the reranker reads a query's text or image" in err


def test_lora_adapter_is_applied(qwen, tmp_path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(1)
    base = AutoModelForImageTextToText.from_pretrained(qwen)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    adapted = peft.get_peft_model(base, config).eval()
    adapted.save_pretrained(tmp_path / "adapter")
    with_adapter = MLLMReranker(str(qwen), adapter=str(tmp_path / "adapter")).score(QUERY, DOCS)
    expected = [_by_hand(qwen, "monoqwen", d, model=adapted) for d in DOCS]
    np.testing.assert_allclose(with_adapter, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(with_adapter, MLLMReranker(str(qwen)).score(QUERY, DOCS), atol=1e-4)


def test_show_renders_thumbnails_and_stage_scores(qwen, tmp_path, capsys) -> None:
    from html.parser import HTMLParser

    from latemm.cli import main

    test_search_cli_reranks_top_pages(qwen, tmp_path, capsys)
    out = tmp_path / "q0.html"
    assert (
        main(
            [
                "show",
                str(tmp_path / "run.parquet"),
                "--index",
                str(tmp_path / "idx"),
                "--query",
                "q0",
                "--k",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )

    class Collect(HTMLParser):
        images: list[str] = []
        headers: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])

        def handle_data(self, data):
            if data in ("fde_score", "maxsim_score", "rerank_score"):
                self.headers.append(data)

    parser = Collect()
    parser.feed(out.read_text())
    assert len(parser.images) == 5 and all(
        src.startswith("data:image/jpeg;base64,") for src in parser.images
    )
    assert parser.headers.count("rerank_score") == 5
