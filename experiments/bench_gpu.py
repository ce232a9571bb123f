"""What only a GPU can show: MaxSim rescoring and brute force on the GPU, FDE encoding, encoder
throughput in bf16 against float32, and the exact top-10 of bench_scale's 1M-page sample.

Sections (``--sections``, all by default except ``exact``):

- ``maxsim``: rescoring C ColPali-shaped pages (1,030 x 128) for 1 and 8 queries, pages in GPU
  memory: ``latemm.ranking.scoring.maxsim`` (float32 products, as the exact pass runs), the same
  from host memory (what ``Retriever(device="cuda")`` does today), float16 products with the max
  taken in place, a plain padded einsum, and the float16 product alone (the limit); and brute force
  over 100k resident pages.
- ``fde``: FDE documents and queries per second, GPU against the host's CPU, same pages.
- ``encoders``: a ColQwen2 model of Qwen2-VL-2B's shape (random weights: the speed does not
  depend on them) encoding page images through ``load_encoder``, bf16 against float32.
- ``exact``: bench_scale's exact top-10 for ``--pages`` (1M): the corpus regenerated on CPU worker
  processes into shared memory and scored on the GPU (float64 products rounded once to float32,
  as the retriever's exact pass), written under the name bench_scale looks for
  (``bench_scale.exact_cache``) so that its run on the 2-core machine reads it.

Run on the GPU machine, e.g. ``python -m experiments.bench_gpu --out-dir $OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from functools import partial
from multiprocessing import get_context, shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.common import write_result
from experiments.synthetic import SyntheticCorpus
from latemm.ranking.scoring import maxsim

TOKENS, DIM, QUERY_TOKENS = 1030, 128, 28


def _timed(fn: Callable[[], object], repeat: int = 10) -> float:
    """Median seconds of ``fn()`` on the GPU after two warm-up calls (CUDA events)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return float(np.median(times))


def _unit(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=g)
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype)


# ------------------------------------------------------------------------------- maxsim
def half_maxsim(queries: torch.Tensor, pages: torch.Tensor, n_queries: int) -> torch.Tensor:
    """(Q*T, d) x (C, L, d) float16 -> (Q, C): float16 products, max over page tokens."""
    c, length, d = pages.shape
    sim = pages.view(c * length, d) @ queries.T  # (C*L, Q*T)
    best = sim.view(c, length, -1).amax(dim=1)  # (C, Q*T)
    return best.float().view(c, n_queries, -1).sum(dim=2).T


def einsum_maxsim(queries: torch.Tensor, pages: torch.Tensor, n_queries: int) -> torch.Tensor:
    """The plain padded form: one einsum to (Q, T, C, L), then max and sum."""
    q = queries.view(n_queries, -1, queries.shape[-1])
    return torch.einsum("qtd,cld->qtcl", q, pages).amax(dim=3).float().sum(dim=1)


def bench_maxsim(candidates: list[int], batches: list[int]) -> list[dict[str, Any]]:
    rows = []
    for c in candidates:
        rows += _maxsim_rows(c, batches)
        torch.cuda.empty_cache()
    return rows


def _maxsim_rows(c: int, batches: list[int]) -> list[dict[str, Any]]:
    pages = _unit((c, TOKENS, DIM), torch.float16, 1)
    flat = pages.view(-1, DIM)
    host = flat.cpu().numpy()
    offsets = np.arange(c + 1, dtype=np.int64) * TOKENS
    rows = []
    for nq in batches:
        queries = _unit((nq * QUERY_TOKENS, DIM), torch.float16, 2)
        q_np = queries.float().cpu().numpy()
        q_off = np.arange(nq + 1, dtype=np.int64) * QUERY_TOKENS
        limit = _timed(partial(torch.matmul, flat, queries.T))
        row: dict[str, Any] = {"candidates": c, "queries": nq, "product_limit_s": limit}
        exact = partial(maxsim, q_np, q_off, device="cuda", block_tokens=1 << 22)
        variants: dict[str, Callable[[], np.ndarray | torch.Tensor]] = {
            "latemm_maxsim_resident": partial(exact, flat, offsets),
            "latemm_maxsim_from_host": partial(exact, host, offsets),
            "latemm_exact_float64_resident": partial(exact, flat, offsets, float64=True),
            "float16_products": partial(half_maxsim, queries, pages, nq),
            "einsum_padded": partial(einsum_maxsim, queries, pages, nq),
        }
        want = exact(flat, offsets, float64=True)
        for name, fn in variants.items():
            row[f"{name}_s"] = _timed(fn)
            row[f"{name}_fraction_of_limit"] = limit / row[f"{name}_s"]
            got = fn()
            got = got.cpu().numpy() if isinstance(got, torch.Tensor) else got
            row[f"{name}_max_abs_error"] = float(np.abs(got - want).max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_brute_force(n_pages: int) -> dict[str, Any]:
    """One query and a batch of 8 against ``n_pages`` resident float16 pages."""
    pages = torch.empty((n_pages, TOKENS, DIM), dtype=torch.float16, device="cuda")
    for a in range(0, n_pages, 10_000):
        pages[a : a + 10_000] = _unit((min(10_000, n_pages - a), TOKENS, DIM), torch.float16, a)
    flat = pages.view(-1, DIM)
    offsets = np.arange(n_pages + 1, dtype=np.int64) * TOKENS
    out: dict[str, Any] = {"pages": n_pages, "resident_gb": flat.numel() * 2 / 1e9}
    chunks = [pages[a : a + 8192] for a in range(0, n_pages, 8192)]
    for nq in (1, 8):
        queries = _unit((nq * QUERY_TOKENS, DIM), torch.float16, 3)
        q_np = queries.float().cpu().numpy()
        q_off = np.arange(nq + 1, dtype=np.int64) * QUERY_TOKENS
        half = partial(half_maxsim, queries, n_queries=nq)
        out[f"float16_products_s_q{nq}"] = _timed(lambda: [half(pages=ch) for ch in chunks], 5)  # noqa: B023
        out[f"latemm_maxsim_s_q{nq}"] = _timed(
            partial(maxsim, q_np, q_off, flat, offsets, device="cuda", block_tokens=1 << 23), 5
        )
    print(json.dumps(out), flush=True)
    return out


# ------------------------------------------------------------------------------- fde
def bench_fde(n_pages: int) -> dict[str, Any]:
    from fde import encode_documents, encode_queries
    from index_store import IndexConfig

    config = IndexConfig(dim=DIM).fde_config
    corpus = SyntheticCorpus(seed=0)
    docs = corpus.pages(0, n_pages).reshape(-1, DIM)
    offsets = np.arange(n_pages + 1, dtype=np.int64) * TOKENS
    queries, _ = corpus.queries(256, n_pages)
    q_flat = queries.reshape(-1, DIM)
    q_off = np.arange(257, dtype=np.int64) * corpus.query_tokens
    out: dict[str, Any] = {"pages": n_pages, "queries": 256, "cpu_threads": torch.get_num_threads()}
    for device in ("cpu", "cuda"):
        for what, fn in (
            ("documents", lambda: encode_documents(docs, config, offsets=offsets, device=device)),  # noqa: B023
            ("queries", lambda: encode_queries(q_flat, config, offsets=q_off, device=device)),  # noqa: B023
        ):
            fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = fn()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            out[f"{what}_{device}_s"] = seconds
            out[f"{what}_{device}_per_s"] = (n_pages if what == "documents" else 256) / seconds
            out[f"{what}_{device}_sum"] = float(np.abs(result).sum())
    out["documents_speedup"] = out["documents_cpu_s"] / out["documents_cuda_s"]
    out["queries_speedup"] = out["queries_cpu_s"] / out["queries_cuda_s"]
    print(json.dumps(out), flush=True)
    return out


# ------------------------------------------------------------------------------- encoders
def qwen2_vl_2b_colqwen2(folder: Path) -> Path:
    """A ColQwen2 checkpoint of Qwen2-VL-2B-Instruct's shape (its published config), random
    weights in bf16, with the test suite's trained tokenizer and the model's pixel budget."""
    from transformers import ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor

    from tests.latemm.tiny_models import qwen2_vl_config, qwen_image_processor, qwen_tokenizer

    tokenizer = qwen_tokenizer()
    mrope = {"mrope_section": [16, 24, 24], "rope_theta": 1000000.0}
    vlm = qwen2_vl_config(
        tokenizer,
        text={
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_scaling": {"type": "mrope", "mrope_section": mrope["mrope_section"]},
            "rope_parameters": {"rope_type": "default", **mrope},
        },
        vision={
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 1536,
            "num_heads": 16,
            "mlp_ratio": 4,
        },
    ).to_dict()
    config = ColQwen2Config(vlm_config=vlm, embedding_dim=128)
    torch.manual_seed(0)
    with torch.device("cuda"):
        # transformers declares PreTrainedModel.to through functools.wraps(nn.Module.to), which
        # mypy reads as an unbound function (self first): a stub gap, the call is nn.Module.to's.
        model = ColQwen2ForRetrieval(config).to(torch.bfloat16).eval()  # type: ignore[arg-type]
    processor = qwen_image_processor()
    processor.min_pixels, processor.max_pixels = 28 * 28 * 4, 28 * 28 * 768  # ColQwen2's budget
    processor.size = {"shortest_edge": processor.min_pixels, "longest_edge": processor.max_pixels}
    ColQwen2Processor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def bench_encoders(n_pages: int) -> dict[str, Any]:
    from latemm.encoders import Page, load_encoder
    from tests.latemm.tiny_models import png_bytes

    pages = [Page(image=png_bytes(850, 1100, i)) for i in range(n_pages)]  # letter page, 100 dpi
    out: dict[str, Any] = {"pages": n_pages, "model": "ColQwen2, Qwen2-VL-2B shape, random"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = qwen2_vl_2b_colqwen2(Path(tmp) / "colqwen2-2b")
        vectors = {}
        for name, dtype in (("bf16", torch.bfloat16), ("float32", torch.float32)):
            encoder = load_encoder(str(folder), device="cuda", dtype=dtype, batch_size=8)
            encoder.encode_documents(pages[:8])  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            got = encoder.encode_documents(pages)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            out[f"{name}_pages_per_s"] = n_pages / seconds
            out[f"{name}_tokens_per_page"] = float(np.diff(got.offsets).mean())
            q0 = time.perf_counter()
            encoder.encode_queries(["what is the total revenue in 2023"] * 64)
            torch.cuda.synchronize()
            out[f"{name}_queries_per_s"] = 64 / (time.perf_counter() - q0)
            vectors[name] = got.vectors
            del encoder
            torch.cuda.empty_cache()
        a, b = vectors["bf16"], vectors["float32"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out["bf16_vs_float32_min_cosine"] = float(cos.min())
        out["bf16_speedup"] = out["bf16_pages_per_s"] / out["float32_pages_per_s"]
    print(json.dumps(out), flush=True)
    return out


# ------------------------------------------------------------------------------- exact
_SHM: shared_memory.SharedMemory | None = None


def _attach(name: str) -> None:
    global _SHM
    _SHM = shared_memory.SharedMemory(name=name)


def _generate(seed: int, start: int, stop: int, slot: int, slot_pages: int) -> tuple[int, int, int]:
    """Worker: pages ``start:stop`` of the corpus into shared-memory slot ``slot``."""
    assert _SHM is not None
    size = slot_pages * TOKENS * DIM
    view = np.ndarray((size,), np.float32, buffer=_SHM.buf, offset=slot * size * 4)
    view[: (stop - start) * TOKENS * DIM] = SyntheticCorpus(seed=seed).pages(start, stop).ravel()
    return start, stop, slot


def exact_top10(
    n_pages: int, n_queries: int, recall_queries: int, index_name: str, workers: int, seed: int
) -> tuple[np.ndarray, dict[str, Any], Path]:
    from experiments.bench_scale import exact_cache, first_pages_sha256, merge_top

    corpus = SyntheticCorpus(seed=seed)
    queries, _ = corpus.queries(max(n_queries, recall_queries), n_pages)
    sample = queries[:recall_queries]
    q_flat = sample.reshape(-1, DIM)
    q_off = np.arange(len(sample) + 1, dtype=np.int64) * corpus.query_tokens
    one = (q_flat[: corpus.query_tokens], q_off[:2])
    chunk, slots = 256, 2 * workers
    shm = shared_memory.SharedMemory(create=True, size=slots * chunk * TOKENS * DIM * 4)
    k = 10
    best = np.full((len(sample), 0), -1, dtype=np.int64)
    best_scores = np.full((len(sample), 0), -np.inf, dtype=np.float32)
    gpu = {"upload_s": 0.0, "float64_batched_s": 0.0, "float32_batched_s": 0.0, "single_s": 0.0}
    start = time.perf_counter()
    try:
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_attach, initargs=(shm.name,)
        ) as pool:
            todo = list(range(0, n_pages, chunk))
            free = list(range(slots))
            pending: set[Future[tuple[int, int, int]]] = set()
            done_pages = 0
            while todo or pending:
                while todo and free:
                    a = todo.pop(0)
                    pending.add(
                        pool.submit(_generate, seed, a, min(a + chunk, n_pages), free.pop(), chunk)
                    )
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    a, b, slot = future.result()
                    size = chunk * TOKENS * DIM
                    host = np.ndarray(((b - a) * TOKENS, DIM), np.float32, shm.buf, slot * size * 4)
                    t0 = time.perf_counter()
                    pages = torch.from_numpy(host).cuda()
                    torch.cuda.synchronize()
                    free.append(slot)  # the slot is free once copied
                    t1 = time.perf_counter()
                    offsets = np.arange(b - a + 1, dtype=np.int64) * TOKENS
                    scores = maxsim(q_flat, q_off, pages, offsets, device="cuda", float64=True)
                    t2 = time.perf_counter()
                    maxsim(q_flat, q_off, pages, offsets, device="cuda", block_tokens=1 << 22)
                    torch.cuda.synchronize()
                    t3 = time.perf_counter()
                    maxsim(one[0], one[1], pages, offsets, device="cuda", block_tokens=1 << 22)
                    torch.cuda.synchronize()
                    t4 = time.perf_counter()
                    gpu["upload_s"] += t1 - t0
                    gpu["float64_batched_s"] += t2 - t1
                    gpu["float32_batched_s"] += t3 - t2
                    gpu["single_s"] += t4 - t3
                    best, best_scores = merge_top(best, best_scores, scores, a, k)
                    done_pages += b - a
                    if done_pages % (chunk * 200) < chunk:
                        print(
                            f"  exact {done_pages}/{n_pages} pages, "
                            f"{time.perf_counter() - start:.0f} s",
                            flush=True,
                        )
    finally:
        shm.close()
        shm.unlink()
    n_q = len(sample)
    stats = {
        "wall_s": time.perf_counter() - start,
        "queries": n_q,
        "computed_on": torch.cuda.get_device_name(0),
        "method": "corpus regenerated on CPU worker processes; float64 products on the GPU, "
        "rounded once to float32 (the retriever's exact pass)",
        "workers": workers,
        # bench_scale's machine checks these pages are the ones it indexed (same numpy stream):
        "first_pages_sha256": first_pages_sha256(corpus),
        # The same names as bench_scale's CPU pass, with the pages already in GPU memory:
        "brute_force_single_query_s": gpu["single_s"],
        "brute_force_batched_s_per_query": gpu["float32_batched_s"] / n_q,
        "gpu_upload_s": gpu["upload_s"],
        "gpu_float64_batched_s_per_query": gpu["float64_batched_s"] / n_q,
        "note": "brute force here is on the GPU with the pages in its memory (float32 products); "
        "the host-to-GPU copy of all pages (gpu_upload_s) comes on top",
    }
    return best, stats, exact_cache(Path(index_name), corpus, n_pages, sample)


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["maxsim", "brute", "fde", "encoders"],
        choices=["maxsim", "brute", "fde", "encoders", "exact"],
    )
    parser.add_argument("--candidates", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--brute-pages", type=int, default=100_000)
    parser.add_argument("--fde-pages", type=int, default=2048)
    parser.add_argument("--encoder-pages", type=int, default=64)
    parser.add_argument("--pages", type=int, default=1_000_000, help="exact: corpus size")
    parser.add_argument("--queries", type=int, default=50, help="exact: as bench_scale's")
    parser.add_argument("--recall-queries", type=int, default=50, help="exact: as bench_scale's")
    parser.add_argument("--index-name", default="index", help="exact: the index folder's name")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="bench_gpu")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA device")
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0)}

    def save() -> None:
        write_result(args.name, result, out_dir=args.out_dir)

    runs = {
        "maxsim": lambda: bench_maxsim(args.candidates, args.batches),
        "brute": lambda: bench_brute_force(args.brute_pages),
        "fde": lambda: bench_fde(args.fde_pages),
        "encoders": lambda: bench_encoders(args.encoder_pages),
    }
    for section in args.sections:
        if section == "exact":
            top, stats, cache = exact_top10(
                args.pages,
                args.queries,
                args.recall_queries,
                args.index_name,
                args.workers,
                args.seed,
            )
            target = (args.out_dir or Path(".")) / cache.name
            np.savez(target, top=top, stats=np.array(json.dumps(stats)))
            result["exact"] = {**stats, "file": target.name}
            print(json.dumps(result["exact"]), flush=True)
        else:
            try:
                result[section] = runs[section]()
            except Exception as error:  # keep the other sections' figures
                result[section] = {"error": f"{type(error).__name__}: {error}"}
                print(f"{section} failed: {error!r}", flush=True)
        save()


if __name__ == "__main__":
    main()
