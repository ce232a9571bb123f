"""Encoder throughput on the CPU: pages/s and tokens/s.

Run: ``python -m experiments.bench_encoders [--quick]``. Writes ``results/bench_encoders.json``.

- The packaged all-MiniLM-L6-v2 (real weights) on Vaswani abstracts and queries, and on
  MMLongBench-Doc page texts (long pages go through overlapping windows);
- the tiny real-architecture ColPali, ColQwen2 and VLM-plus-projection checkpoints the tests
  build from configs, on real MMLongBench-Doc page images (rendered at 96 dpi).
Tokens are the vectors the encoder emits (padding excluded). Each figure is the median of a
few timed runs after a warm-up, with torch on all cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments import render
from experiments.common import minilm_path, read_trec_docs, shared_data_dir, write_result
from experiments.render import Sources
from latemm.encoders import MultiVectors, Page, load_encoder


def timed(fn: Callable[[], MultiVectors], repeats: int) -> tuple[float, MultiVectors]:
    """Median seconds of ``fn()`` over ``repeats`` calls after a warm-up, and its last output."""
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def measure(
    name: str,
    encode: Callable[[Sequence[Page | str]], MultiVectors],
    items: Sequence[Page | str],
    repeats: int,
) -> dict[str, str | float]:
    seconds, out = timed(lambda: encode(items), repeats)
    tokens = int(out.offsets[-1])
    row: dict[str, str | float] = {
        "encoder": name,
        "items": len(items),
        "seconds": seconds,
        "items_per_s": len(items) / seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_item": tokens / len(items),
    }
    print(
        f"  {name}: {row['items_per_s']:.1f} items/s, {row['tokens_per_s']:.0f} tokens/s "
        f"({row['tokens_per_item']:.0f} tokens each)",
        flush=True,
    )
    return row


def page_images(n: int) -> list[bytes]:
    """The first n pages of MMLongBench-Doc's PDFs, rendered as JPEG at 96 dpi."""
    import pypdfium2

    from latemm.data.ingest import render_page

    out: list[bytes] = []
    for pdf_path in sorted((shared_data_dir() / "mmlongbench" / "pdfs").glob("*.pdf")):
        pdf = pypdfium2.PdfDocument(str(pdf_path))
        for i in range(min(len(pdf), n - len(out))):
            out.append(render_page(pdf[i], dpi=96, max_pixels=1024 * 1024, image_format="JPEG"))
        pdf.close()
        if len(out) >= n:
            break
    return out


def page_texts(n: int) -> list[str]:
    import pypdfium2

    out: list[str] = []
    for pdf_path in sorted((shared_data_dir() / "mmlongbench" / "pdfs").glob("*.pdf")):
        pdf = pypdfium2.PdfDocument(str(pdf_path))
        for page in pdf:
            text = page.get_textpage().get_text_range().strip()
            if text:
                out.append(text)
            if len(out) >= n:
                break
        pdf.close()
        if len(out) >= n:
            break
    return out


def main(argv: list[str] | None = None) -> None:
    from tests.latemm.tiny_models import build_colpali, build_colqwen2, build_vlm_with_projection

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and repeats")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else 3
    n_docs, n_pages = (256, 16) if args.quick else (1024, 64)
    rows = []
    minilm = load_encoder(minilm_path())
    _, abstracts = read_trec_docs(shared_data_dir() / "vaswani" / "doc-text.trec")
    print("MiniLM (real weights)", flush=True)
    rows.append(
        measure("minilm: Vaswani abstracts", minilm.encode_documents, abstracts[:n_docs], repeats)
    )
    rows.append(
        measure(
            "minilm: MMLongBench page texts", minilm.encode_documents, page_texts(n_pages), repeats
        )
    )
    rows.append(
        measure(
            "minilm: queries", minilm.encode_queries, [a[:80] for a in abstracts[:n_docs]], repeats
        )
    )
    images = [Page(image=data) for data in page_images(n_pages)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in [
            ("tiny ColPali", build_colpali),
            ("tiny ColQwen2", build_colqwen2),
            ("tiny VLM + projection (Qwen2-VL)", build_vlm_with_projection),
        ]:
            encoder = load_encoder(str(build(Path(tmp) / name.split()[1])))
            print(name, flush=True)
            rows.append(measure(f"{name}: page images", encoder.encode_documents, images, repeats))
            rows.append(
                measure(
                    f"{name}: queries",
                    encoder.encode_queries,
                    [a[:80] for a in abstracts[:n_pages]],
                    repeats,
                )
            )
    write_result(
        "bench_encoders" + ("_quick" if args.quick else ""),
        {"torch_threads": torch.get_num_threads(), "rows": rows},
    )


# ------------------------------------------------------------------------------ report
def render_section(r: dict[str, Any], sources: Sources) -> str:
    out = ["## 7. Encoder throughput on the CPU", render.provenance(r), ""]
    out.append(
        "Real MiniLM weights; the vision models are the tests' tiny real-architecture checkpoints "
        "(random weights), so their figures show the pipeline's overhead, not a real model's cost.\n"
    )
    rows = [
        [x["encoder"], x["items"], x["items_per_s"], x["tokens_per_s"], x["tokens_per_item"]]
        for x in r["rows"]
    ]
    out.append(
        render.table(["encoder: input", "items", "items/s", "tokens/s", "tokens/item"], rows)
    )
    return "\n".join(out)


if __name__ == "__main__":
    main()
