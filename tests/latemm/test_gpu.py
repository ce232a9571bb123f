"""The CUDA paths against the CPU ones: encoders (float32 and bf16), the reranker, FDE, MaxSim
and the whole retriever. Run on a machine with a GPU: ``pytest -m gpu tests/latemm/test_gpu.py``
(the default suite leaves them out; without CUDA they skip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fde import encode_documents, encode_queries
from index_store import Index, IndexConfig, create
from latemm.encoders import Page, load_encoder
from latemm.ranking.scoring import maxsim
from latemm.retrieval.reranker import MLLMReranker
from latemm.retrieval.retriever import Retriever
from tests.latemm.tiny_models import (
    build_colbert_pylate,
    build_colmodernvbert,
    build_colpali,
    build_colqwen2,
    build_qwen2_vl,
    png_bytes,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PAGES = [png_bytes(60, 40, 0), png_bytes(30, 90, 1), png_bytes(56, 56, 2)]
QUERIES = ["what is the revenue", "chart", "how many pages show the total growth"]

# (builder, load_encoder kind, documents): every encoder family the CLI can load.
ENCODERS = {
    "colpali": (build_colpali, "multi", "images"),
    "colqwen2": (build_colqwen2, "multi", "images"),
    "colmodernvbert": (build_colmodernvbert, "multi", "images"),
    "qwen2_vl_single": (build_qwen2_vl, "single", "images"),
    "colbert": (build_colbert_pylate, "multi", "texts"),
}


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def checkpoint(request, tmp_path_factory):
    build, kind, docs = ENCODERS[request.param]
    return build(tmp_path_factory.mktemp(request.param)), kind, docs


def _encode(folder, kind, docs, **options):
    encoder = load_encoder(str(folder), kind=kind, **options)
    items = [Page(image=p) for p in PAGES] if docs == "images" else QUERIES[::-1]
    return encoder.encode_documents(items, batch_size=2), encoder.encode_queries(
        QUERIES, batch_size=2
    )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_encoders_on_cuda_equal_the_cpu(checkpoint) -> None:
    """float32 on the GPU gives the CPU's vectors (cuDNN's TF32 convolutions allow ~1e-3);
    bf16, the GPU default, gives the same sets with every vector's direction kept."""
    folder, kind, docs = checkpoint
    cpu = _encode(folder, kind, docs, device="cpu", dtype=torch.float32)
    gpu32 = _encode(folder, kind, docs, device="cuda", dtype=torch.float32)
    gpu16 = _encode(folder, kind, docs, device="cuda")  # default dtype on a GPU: bf16
    for want, got32, got16 in zip(cpu, gpu32, gpu16, strict=True):
        assert got32.offsets.tolist() == want.offsets.tolist()
        assert got16.offsets.tolist() == want.offsets.tolist()
        assert got32.vectors.dtype == got16.vectors.dtype == np.float32
        np.testing.assert_allclose(got32.vectors, want.vectors, rtol=5e-3, atol=5e-3)
        assert _cosines(got16.vectors, want.vectors).min() > 0.98


def test_reranker_on_cuda_equals_the_cpu(tmp_path) -> None:
    folder = build_qwen2_vl(tmp_path / "qwen")
    docs = [Page(image=PAGES[0]), Page(text="total revenue chart"), Page(image=PAGES[1])]
    cpu = MLLMReranker(str(folder), device="cpu", dtype=torch.float32).score(QUERIES[0], docs)
    gpu = MLLMReranker(str(folder), device="cuda", dtype=torch.float32).score(QUERIES[0], docs)
    bf16 = MLLMReranker(str(folder), device="cuda").score(QUERIES[0], docs)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(bf16, cpu, atol=0.05)


def _sets(rng, n: int, dim: int, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = rng.integers(low, high, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = rng.standard_normal((int(offsets[-1]), dim)).astype(np.float32)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True), offsets


def test_fde_on_cuda_equals_the_cpu() -> None:
    rng = np.random.default_rng(0)
    docs, doc_offsets = _sets(rng, 50, 128, 1, 300)
    queries, query_offsets = _sets(rng, 7, 128, 1, 40)
    config = IndexConfig(dim=128).fde_config
    for encode, flat, offsets in (
        (encode_documents, docs, doc_offsets),
        (encode_queries, queries, query_offsets),
    ):
        want = encode(flat, config, offsets=offsets)
        got = encode(flat, config, offsets=offsets, device="cuda")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_maxsim_on_cuda_equals_float64_from_host_and_from_gpu_memory() -> None:
    rng = np.random.default_rng(1)
    docs, doc_offsets = _sets(rng, 200, 128, 1, 100)
    queries, query_offsets = _sets(rng, 5, 128, 3, 30)
    for stored in (docs, docs.astype(np.float16)):
        want = maxsim(queries, query_offsets, stored, doc_offsets, float64=True)
        for doc_input in (stored, torch.from_numpy(stored).cuda()):
            for block in (1 << 16, 37):
                got = maxsim(
                    queries,
                    query_offsets,
                    doc_input,
                    doc_offsets,
                    device="cuda",
                    block_tokens=block,
                )
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
            exact = maxsim(
                queries, query_offsets, doc_input, doc_offsets, device="cuda", float64=True
            )
            np.testing.assert_allclose(exact, want, rtol=2e-7, atol=0)


@pytest.mark.parametrize("dtype", ["float16", "int8", "pq1"])
def test_retriever_on_cuda_returns_the_cpu_top_k(tmp_path, dtype) -> None:
    """The GPU retriever (exact pass over every candidate) and the CPU one (fast pass, then the
    exact pass over the few that can reach the top) return the same pages and scores."""
    rng = np.random.default_rng(2)
    docs, doc_offsets = _sets(rng, 1200, 128, 20, 60)
    with create(tmp_path / "idx", IndexConfig(dim=128, dtype=dtype)) as writer:
        for a in range(0, 1200, 400):
            sets = [docs[doc_offsets[i] : doc_offsets[i + 1]] for i in range(a, a + 400)]
            writer.add([f"d{i}" for i in range(a, a + 400)], sets)
            writer.commit()
    index = Index.open(tmp_path / "idx")
    queries, query_offsets = _sets(rng, 6, 128, 5, 20)
    cpu = Retriever(index).search_embeddings(queries, query_offsets, k=10, candidates=1200)
    gpu = Retriever(index, device="cuda").search_embeddings(
        queries, query_offsets, k=10, candidates=1200
    )
    assert gpu.doc_ids.tolist() == cpu.doc_ids.tolist()
    np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=1e-6, atol=1e-6)
