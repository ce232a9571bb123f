"""Disk of a multi-field index by file kind: does a second vector field over the same pages cost
only its vectors and first stage (issue 26's must-show), now that a page store holds each page's
text and image once?

Pages: real MMLongBench-Doc PDFs (``--pdfs`` smallest ones, ``latemm ingest --ocr never``: page
images as JPEG and the text layer). Two precomputed multi-vector fields over them (seeded unit
vectors, ``--tokens`` per page, dims 128 and 96; what they hold does not change the bytes of the
rest). Four indexes: one field (a corpus without ``emb_b``) and two fields, each in today's layout (a page store) and in the
layout before it (every vector field's metadata holding the pages' content: built by the same
code with the page store switched off, which is what latemm wrote before). Writes
``results/fields_disk.json``: bytes per file kind of each index, and the claim's check
``two - one <= the second field's vectors + first stage + bookkeeping``.

Run: ``python -m experiments.fields_disk [--pdfs 3] [--tokens 128]`` (about a minute).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from experiments.common import shared_data_dir, write_result
from latemm.data.ingest import ingest_pdfs
from latemm.index import fields as fields_module
from latemm.index.fields import index_fields

KINDS = {  # file kind -> how a file is recognised
    "vectors": lambda p: (
        p.name in ("vectors.npy", "offsets.npy", "page-max.npy") or p.suffix == ".npy"
    ),
    "first stage": lambda p: p.suffix == ".faiss",
    "field metadata": lambda p: p.name == "meta.parquet",
    "page store": lambda p: p.parent.name == "pages" and p.suffix == ".parquet",
}


def kind_of(path: Path) -> str:
    for kind, match in KINDS.items():
        if match(path):
            return kind
    return "manifests and locks"


def bytes_by_kind(root: Path) -> dict[str, int]:
    out = dict.fromkeys([*KINDS, "manifests and locks"], 0)
    for path in root.rglob("*"):
        if path.is_file():
            out[kind_of(path)] += path.stat().st_size
    out["total"] = sum(out.values())
    return out


def field_bytes(root: Path, name: str) -> dict[str, int]:
    return bytes_by_kind(root / "fields" / name)


def corpus(work: Path, pdfs: int, tokens: int) -> Path:
    folder = shared_data_dir() / "mmlongbench" / "pdfs"
    import pypdfium2

    sizes = sorted((len(pypdfium2.PdfDocument(str(p))), p.name) for p in folder.glob("*.pdf"))
    chosen = [folder / name for _, name in sizes[:pdfs]]
    pages = work / "pages.parquet"
    ingest_pdfs(chosen, pages, ocr="never", progress=False)
    table = pq.read_table(pages)
    rng = np.random.default_rng(0)

    def vectors(dim: int) -> pa.Array:
        out = []
        for _ in range(table.num_rows):
            v = rng.standard_normal((tokens, dim)).astype(np.float32)
            out.append((v / np.linalg.norm(v, axis=1, keepdims=True)).tolist())
        return pa.array(out, pa.list_(pa.list_(pa.float32())))

    table = table.append_column("emb_a", vectors(128)).append_column("emb_b", vectors(96))
    path = work / "corpus.parquet"
    pq.write_table(table, path)
    return path


def build(source: Path, index: Path, fields: dict[str, str], *, store: bool) -> None:
    if store:
        index_fields(source, index, fields, progress=False)
        return
    kept = fields_module._store_pages  # noqa: SLF001 - the layout before the page store
    setattr(fields_module, "_store_pages", lambda root, manifest, *a: manifest)  # noqa: B010
    try:
        index_fields(source, index, fields, progress=False)
    finally:
        setattr(fields_module, "_store_pages", kept)  # noqa: B010


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdfs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = corpus(work, args.pdfs, args.tokens)
        table = pq.read_table(source, columns=["image", "text"])
        images = sum(
            len((v or {}).get("bytes") or b"") if isinstance(v, dict) else len(v or b"")
            for v in table.column("image").to_pylist()
        )
        text = sum(len((t or "").encode()) for t in table.column("text").to_pylist())
        one, two = {"a": "embedding:emb_a"}, {"a": "embedding:emb_a", "b": "embedding:emb_b"}
        only_a = work / "corpus-a.parquet"
        pq.write_table(pq.read_table(source).drop_columns(["emb_b"]), only_a)
        layouts: dict[str, Any] = {}
        for layout, store in (("page store", True), ("before (content in each field)", False)):
            sizes = {}
            for label, fields in (("one field", one), ("two fields", two)):
                index = work / f"{store}-{len(fields)}"
                # (one field's corpus leaves out emb_b: a column no field reads is kept as
                # metadata, in either layout, and would blur the comparison)
                build(only_a if len(fields) == 1 else source, index, fields, store=store)
                sizes[label] = bytes_by_kind(index)
                if label == "two fields":
                    sizes["second field"] = field_bytes(index, "b")
            second = sizes["second field"]
            extra = sizes["two fields"]["total"] - sizes["one field"]["total"]
            vectors_first_stage = second["vectors"] + second["first stage"]
            layouts[layout] = {
                **sizes,
                "two minus one": extra,
                "second field's vectors + first stage": vectors_first_stage,
                "second field's other bytes": extra - vectors_first_stage,
            }
            print(
                f"{layout}: one field {sizes['one field']['total']:,} B, two fields "
                f"{sizes['two fields']['total']:,} B; the second field adds {extra:,} B, of "
                f"which vectors + first stage {vectors_first_stage:,} B"
            )
        payload = {
            "pages": table.num_rows,
            "pdfs": args.pdfs,
            "tokens_per_page": args.tokens,
            "image_bytes": images,
            "text_bytes": text,
            "layouts": layouts,
            "claim_holds": layouts["page store"]["second field's other bytes"] < images / 100,
        }
        print(f"pages {table.num_rows}, image bytes {images:,}, text bytes {text:,}")
        print("written", write_result("fields_disk", payload))


if __name__ == "__main__":
    main()
