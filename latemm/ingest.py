"""PDFs to a corpus Parquet file: one row per page with its rendered image and its text.

Pages stream through a Parquet writer, so a 1,000-page PDF never sits in memory. A page whose
image or text cannot be extracted is reported (file, page, reason) and skipped; a file that is not
a readable PDF is reported and skipped. Needs ``pypdfium2`` (``pip install 'latemm[pdf]'``).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import InputError, require

CORPUS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("image", pa.binary()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("page", pa.int32()),
        ("num_pages", pa.int32()),
        ("title", pa.string()),
        ("author", pa.string()),
    ]
)


@dataclass
class IngestReport:
    files: int = 0
    pages: int = 0
    problems: list[str] = field(default_factory=list)


def pdf_files(inputs: Iterable[str | Path], report: IngestReport) -> Iterator[Path]:
    """PDF files under the inputs (files or folders, recursively, sorted); anything else is
    reported and skipped."""
    names: dict[str, Path] = {}  # page ids are {file name}#p{page}: names must not collide
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path} does not exist")
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            with open(candidate, "rb") as fh:
                magic = fh.read(5)
            if magic != b"%PDF-":
                report.problems.append(f"{candidate}: not a PDF (skipped)")
                continue
            if candidate.name in names:
                report.problems.append(
                    f"{candidate}: has the same file name as {names[candidate.name]}, so their page "
                    "ids would collide; skipped (rename one)"
                )
                continue
            names[candidate.name] = candidate
            yield candidate


def _check_worth_writing(report: IngestReport, out: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse to write a corpus of no pages over an existing file, or from no PDFs at all: a
    typo'd folder must not wipe a corpus."""
    named = ", ".join(str(i) for i in inputs)
    if report.files == 0 or (report.pages == 0 and out.exists()):
        for problem in report.problems:
            print(f"latemm ingest: {problem}", file=sys.stderr)
    if report.files == 0:
        raise InputError(
            f"no readable PDF in {named}; nothing was written"
            + (f" and {out} is unchanged" if out.exists() else "")
        )
    if report.pages == 0 and out.exists():
        raise InputError(
            f"no page of {named} could be ingested, so {out} would be replaced by an empty "
            "corpus; it is unchanged (see the problems above, or write to another --out)"
        )


def render_page(page: Any, *, dpi: float, max_pixels: int | None, image_format: str) -> bytes:
    scale = dpi / 72.0
    width, height = page.get_size()
    if max_pixels is not None and width * height * scale * scale > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
    image = page.render(scale=scale).to_pil()
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


# Over 60 lines on purpose: one streaming loop over PDFs and pages; each step reports its own problem with file and page.
def _page_count(pdfium: Any, files: list[Path]) -> int | None:
    """Pages in all ``files`` (the progress bar's total, for its ETA); None if a file cannot be
    opened here (the ingest itself then reports it)."""
    total = 0
    for path in files:
        try:
            pdf = pdfium.PdfDocument(str(path))
        except Exception:  # noqa: BLE001 - reported by the ingest loop
            return None
        total += len(pdf)
        pdf.close()
    return total


def ingest_pdfs(
    inputs: Iterable[str | Path],
    out: str | Path,
    *,
    dpi: float = 96.0,
    max_pixels: int | None = 1024 * 1024,
    images: bool = True,
    image_format: str = "JPEG",
    rows_per_group: int = 64,
    progress: bool = True,
) -> IngestReport:
    """Render and extract every page of the PDFs into a corpus Parquet file.

    Parameters
    ----------
    inputs
        PDF files and/or folders of PDFs.
    out
        The corpus Parquet file (``doc_id`` is ``{file name}#p{page}``, pages 1-based).
    dpi, max_pixels
        Rendering resolution, capped at ``max_pixels`` pixels per page.
    images
        False extracts text only (much faster; for text encoders).
    """
    inputs = list(inputs)
    if not dpi > 0 or dpi > 2400:
        raise InputError(f"--dpi must be between 0 and 2400 (exclusive of 0), got {dpi}")
    if max_pixels is not None and max_pixels < 1:
        raise InputError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    pdfium = require("pypdfium2", "pdf")
    from tqdm.auto import tqdm

    report = IngestReport()
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    rows: dict[str, list[Any]] = {name: [] for name in CORPUS_SCHEMA.names}

    def flush(writer: pq.ParquetWriter) -> None:
        if rows["doc_id"]:
            writer.write_table(pa.table(rows, schema=CORPUS_SCHEMA))
            for column in rows.values():
                column.clear()

    files = list(pdf_files(inputs, report))
    bar = tqdm(
        total=_page_count(pdfium, files) if progress else None,
        desc="ingesting",
        unit="page",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        with pq.ParquetWriter(tmp, CORPUS_SCHEMA) as writer:
            for path in files:
                try:
                    pdf = pdfium.PdfDocument(str(path))
                except Exception as exc:  # noqa: BLE001 - pdfium raises its own error types
                    report.problems.append(f"{path}: cannot open as PDF ({exc}); skipped")
                    continue
                report.files += 1
                meta = pdf.get_metadata_dict() if hasattr(pdf, "get_metadata_dict") else {}
                n_pages = len(pdf)
                for number in range(n_pages):
                    where = f"{path}, page {number + 1}"
                    try:
                        page = pdf[number]
                    except Exception as exc:  # noqa: BLE001
                        report.problems.append(f"{where}: cannot load page ({exc}); skipped")
                        continue
                    try:
                        text = page.get_textpage().get_text_range()
                    except Exception as exc:  # noqa: BLE001
                        report.problems.append(f"{where}: text extraction failed ({exc}); skipped")
                        continue
                    image = None
                    if images:
                        try:
                            image = render_page(
                                page, dpi=dpi, max_pixels=max_pixels, image_format=image_format
                            )
                        except Exception as exc:  # noqa: BLE001
                            report.problems.append(f"{where}: rendering failed ({exc}); skipped")
                            continue
                    elif not text.strip():
                        report.problems.append(
                            f"{where}: no text layer and images are off; skipped"
                        )
                        continue
                    rows["doc_id"].append(f"{path.name}#p{number + 1}")
                    rows["image"].append(image)
                    rows["text"].append(text)
                    rows["source"].append(path.name)
                    rows["page"].append(number + 1)
                    rows["num_pages"].append(n_pages)
                    rows["title"].append(meta.get("Title") or None)
                    rows["author"].append(meta.get("Author") or None)
                    report.pages += 1
                    bar.update(1)
                    if len(rows["doc_id"]) >= rows_per_group:
                        flush(writer)
                pdf.close()
            flush(writer)
        _check_worth_writing(report, out_path, inputs)
        tmp.replace(out_path)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    for problem in report.problems:
        print(f"latemm ingest: {problem}", file=sys.stderr)
    return report
