"""PDFs and page images to a corpus Parquet file: one row per page with its image and its text.

Pages stream through a Parquet writer, so a 1,000-page PDF never sits in memory. A page's text is
its PDF text layer or, for pages without one (and for image files: PNG, JPEG, TIFF with all its
frames), what OCR reads on the page image ingest renders anyway (``latemm.data.ocr``, in worker
processes); each row records where its text came from (``text_source``: ``layer``, ``ocr`` or
``none``) and the OCR's mean line confidence. OCR results are appended to a sidecar file as they
arrive, so an interrupted ingest re-run with the same output resumes without OCR-ing finished
pages again. A page whose image or text cannot be extracted is reported (file, page, reason) and
skipped; a file that is not a readable PDF or image is reported and skipped. Needs ``pypdfium2``
for PDFs (``pip install 'latemm[pdf]'``) and an OCR engine for OCR (``latemm[ocr]``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from index_store.errors import InputError, require
from latemm.data.ocr import (
    EMPTY_REASON,
    ENGINES,
    OCR_MODES,
    OcrPool,
    PageText,
    default_engine,
    default_workers,
    engine_available,
    open_engine,
)

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
        ("text_source", pa.string()),  # layer, ocr or none
        ("ocr_confidence", pa.float32()),  # mean line confidence when the text is OCR's
        ("layer_text", pa.string()),  # the PDF's own text, kept apart under --ocr always
    ]
)

# A text layer with fewer visible characters than this (a page number, a stray label) is
# "nearly empty": --ocr auto reads such a page with OCR.
NEARLY_EMPTY_CHARS = 20
# Pages that OCR reads are rendered at this resolution (then shrunk for the stored image): at
# 96 dpi the recogniser drops the spaces of body text and confuses letters.
OCR_DPI = 144.0
OCR_MAX_PIXELS = 4 * 1024 * 1024
# Pages held back (in file order) behind one whose OCR has not finished.
MAX_PENDING = 256
# A page image with no grey level below this (of 255) is blank: OCR would find nothing.
BLANK_LEVEL = 230

PDF_MAGIC = b"%PDF-"
IMAGE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")


@dataclass
class IngestReport:
    files: int = 0
    pages: int = 0
    problems: list[str] = field(default_factory=list)
    ocr_pages: int = 0  # pages whose OCR ran in this call
    ocr_resumed: int = 0  # pages whose OCR came from an interrupted earlier call
    ocr_seconds: float = 0.0  # from the first OCR submitted to the last page written
    text_sources: dict[str, int] = field(default_factory=dict)


def input_files(inputs: Iterable[str | Path], report: IngestReport) -> Iterator[tuple[Path, str]]:
    """PDF and image files (``"pdf"`` or ``"image"``) under the inputs (files or folders,
    recursively, sorted); anything else is reported and skipped."""
    names: dict[str, Path] = {}  # page ids are {file name}#p{page}: names must not collide
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path} does not exist")
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            with open(candidate, "rb") as fh:
                magic = fh.read(8)
            if magic.startswith(PDF_MAGIC):
                kind = "pdf"
            elif magic.startswith(IMAGE_MAGICS):
                kind = "image"
            else:
                report.problems.append(
                    f"{candidate}: not a PDF (skipped); nor a PNG, JPEG or TIFF image"
                )
                continue
            if candidate.name in names:
                report.problems.append(
                    f"{candidate}: has the same file name as {names[candidate.name]}, so their page "
                    "ids would collide; skipped (rename one)"
                )
                continue
            names[candidate.name] = candidate
            yield candidate, kind


def pdf_files(inputs: Iterable[str | Path], report: IngestReport) -> Iterator[Path]:
    """PDF files under the inputs; anything else is reported and skipped."""
    for path, kind in input_files(inputs, report):
        if kind == "pdf":
            yield path
        else:
            report.problems.append(f"{path}: not a PDF (skipped)")


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
            + " (PNG, JPEG and TIFF images are read too)"
        )
    if report.pages == 0 and out.exists():
        raise InputError(
            f"no page of {named} could be ingested, so {out} would be replaced by an empty "
            "corpus; it is unchanged (see the problems above, or write to another --out)"
        )


def _encode(image: Any, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _scale(width: float, height: float, dpi: float, max_pixels: int | None) -> float:
    scale = dpi / 72.0
    if max_pixels is not None and width * height * scale * scale > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
    return scale


def render_page(page: Any, *, dpi: float, max_pixels: int | None, image_format: str) -> bytes:
    width, height = page.get_size()
    scale = _scale(width, height, dpi, max_pixels)
    return _encode(page.render(scale=scale).to_pil(), image_format)


def _shrink(image: Any, max_pixels: int | None) -> Any:
    if max_pixels is not None and image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, resample=3)  # bicubic
    return image


def _is_blank(image: Any) -> bool:
    """Whether an image has no pixel darker than near-white on its grey scale: nothing for OCR
    to read, so the engine is not run."""
    return image.convert("L").point(lambda v: 255 if v < BLANK_LEVEL else 0).getbbox() is None


def _render_for_ocr(
    page: Any, *, dpi: float, max_pixels: int | None, image_format: str, images: bool
) -> tuple[bytes | None, bytes | None]:
    """One render of a page that OCR reads: (the stored image at ``dpi`` capped at
    ``max_pixels``, or None without images; the PNG that OCR reads, at ``OCR_DPI`` or more,
    capped at ``OCR_MAX_PIXELS``; None for a blank page). Small text loses the spaces between its words at 96 dpi."""
    width, height = page.get_size()
    stored = _scale(width, height, dpi, max_pixels)
    scale = max(stored, _scale(width, height, OCR_DPI, OCR_MAX_PIXELS))
    rendered = page.render(scale=scale).to_pil()
    image = None
    if images:
        size = (max(1, round(width * stored)), max(1, round(height * stored)))
        image = _encode(
            rendered.resize(size, resample=3) if scale != stored else rendered, image_format
        )
    return image, None if _is_blank(rendered) else _encode(rendered, "PNG")


def _fit_image(image: Any, max_pixels: int | None, image_format: str) -> bytes:
    """An image file's frame, shrunk to ``max_pixels`` like a rendered page, encoded."""
    return _encode(_shrink(image, max_pixels).convert("RGB"), image_format)


@dataclass
class _Page:
    """A page on its way to a row: what its file gave, and its OCR when it needs one."""

    where: str
    doc_id: str
    source: str
    page: int
    num_pages: int
    title: str | None
    author: str | None
    layer: str
    image: bytes | None  # stored in the row
    ocr_image: bytes | None = None  # what OCR reads (the stored image, or one rendered for it)
    blank: bool = False  # OCR was wanted but the image is blank: no text found, engine not run
    ocr: Future[PageText | str] | None = None
    ocr_key: str | None = None


class _OcrJournal:
    """OCR results of this output, one JSON line per page, appended as they arrive. Keyed by
    engine, doc_id and a hash of the page image, so a resumed ingest reuses a result only for
    the same page image read by the same engine. Removed when the ingest completes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, PageText] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:  # the last line of a killed run may be cut short
                    entry = json.loads(line)
                    self.done[entry["key"]] = PageText(
                        entry["text"], entry["confidence"], entry["lines"]
                    )
                except (ValueError, KeyError, TypeError):
                    continue
        self._fh: Any = None
        self._lock = threading.Lock()  # results arrive on the pool's thread

    @staticmethod
    def key(engine: str, doc_id: str, image: bytes) -> str:
        return f"{engine}|{doc_id}|{hashlib.sha256(image).hexdigest()[:32]}"

    def add(self, key: str, result: PageText) -> None:
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - see close()
            self._fh.write(json.dumps({"key": key, **result.__dict__}) + "\n")
            self._fh.flush()

    def keep(self, key: str) -> Any:
        """A future's done-callback that adds its result under ``key`` (errors are not kept:
        they are retried on resume)."""

        def callback(future: Future[PageText | str]) -> None:
            if not future.cancelled() and future.exception() is None:
                result = future.result()
                if isinstance(result, PageText):
                    self.add(key, result)

        return callback

    def sync(self) -> None:
        with self._lock:
            if self._fh is not None:
                os.fsync(self._fh.fileno())

    def close(self, *, remove: bool) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
        if remove:
            self.path.unlink(missing_ok=True)


def journal_path(out: str | Path) -> Path:
    """The sidecar file where ``ingest`` keeps OCR results until the corpus is complete."""
    out = Path(out)
    return out.with_name(f".{out.name}.ocr.jsonl")


def _page_count(files: list[tuple[Path, str]]) -> int | None:
    """Pages in all ``files`` (the progress bar's total, for its ETA): a PDF's pages, an image
    file's frames; None if a file cannot be opened here (the ingest itself then reports it)."""
    from PIL import Image

    total = 0
    for path, kind in files:
        try:
            if kind == "pdf":
                pdf = require("pypdfium2", "pdf").PdfDocument(str(path))
                total += len(pdf)
                pdf.close()
            else:
                with Image.open(path) as image:
                    total += getattr(image, "n_frames", 1)
        except Exception:  # noqa: BLE001 - reported by the ingest loop
            return None
    return total


def _pdf_pages(
    path: Path, pdfium: Any, report: IngestReport, *, render: Any, images: bool, wants_ocr: Any
) -> Iterator[_Page]:
    """The pages of one PDF; pages that cannot be loaded or rendered are reported."""
    try:
        pdf = pdfium.PdfDocument(str(path))
    except Exception as exc:  # noqa: BLE001 - pdfium raises its own error types
        report.problems.append(f"{path}: cannot open as PDF ({exc}); skipped")
        return
    report.files += 1
    try:
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
            ocr = wants_ocr(text)
            image, ocr_image = None, None
            try:
                if ocr:
                    image, ocr_image = render(page, images=images, for_ocr=True)
                elif images:
                    image, _ = render(page, images=images, for_ocr=False)
            except Exception as exc:  # noqa: BLE001
                report.problems.append(f"{where}: rendering failed ({exc}); skipped")
                continue
            yield _Page(
                where,
                f"{path.name}#p{number + 1}",
                path.name,
                number + 1,
                n_pages,
                meta.get("Title") or None,
                meta.get("Author") or None,
                text,
                image,
                ocr_image=ocr_image,
                blank=ocr and ocr_image is None,
            )
    finally:
        pdf.close()


def _image_pages(
    path: Path,
    report: IngestReport,
    *,
    fit: Any,
    images: bool,
    image_format: str,
    wants_ocr: Any,
) -> Iterator[_Page]:
    """The frames of one image file (a multi-page TIFF has several) as pages."""
    from PIL import Image, ImageSequence

    try:
        opened = Image.open(path)
        n_pages = getattr(opened, "n_frames", 1)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        report.problems.append(f"{path}: cannot read as an image ({exc}); skipped")
        return
    report.files += 1
    ocr = wants_ocr("")
    with opened:
        frames = ImageSequence.Iterator(opened)
        for number in range(n_pages):
            where = f"{path}, page {number + 1}"
            try:
                frame = frames[number]
                frame.load()
                image = fit(frame, image_format) if images else None
                blank = ocr and _is_blank(frame)
                ocr_image = (
                    _encode(_shrink(frame, OCR_MAX_PIXELS).convert("RGB"), "PNG")
                    if ocr and not blank
                    else None
                )
            except Exception as exc:  # noqa: BLE001
                report.problems.append(f"{where}: cannot decode the image ({exc}); skipped")
                continue
            yield _Page(
                where,
                f"{path.name}#p{number + 1}",
                path.name,
                number + 1,
                n_pages,
                None,
                None,
                "",
                image,
                ocr_image=ocr_image,
                blank=blank,
            )


def _resolve_ocr(ocr: str, engine: str | None) -> str | None:
    """The engine this ingest uses (None: no OCR), or an error before any work."""
    if ocr not in OCR_MODES:
        raise InputError(f"--ocr must be one of {', '.join(OCR_MODES)}, got {ocr!r}")
    if engine is not None and engine not in ENGINES:
        raise InputError(f"--ocr-engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if ocr == "never":
        return None
    if engine is not None:
        if not engine_available(engine):
            open_engine(engine)  # raises MissingDependencyError with the install line
        return engine
    found = default_engine()
    if found is None and ocr == "always":
        open_engine("rapidocr")  # raises MissingDependencyError with the install line
    if found is None:
        print(
            "latemm ingest: no OCR engine installed, so pages without a text layer keep no text "
            "(pip install 'latemm[ocr]' to read them)",
            file=sys.stderr,
        )
    return found


def _finish(page: _Page, report: IngestReport) -> tuple[str, str, float | None] | None:
    """The page's (text, text_source, OCR confidence), from its layer or its OCR; None when
    the row is dropped (reported)."""
    text, source, confidence = page.layer, "layer" if page.layer.strip() else "none", None
    if page.ocr is not None:
        result = page.ocr.result()
        if isinstance(result, str):
            report.problems.append(f"{page.where}: {result}; kept with its text layer only")
        else:
            if result.text.strip():
                text, source, confidence = result.text, "ocr", result.confidence
            elif not page.layer.strip() and page.image is not None:
                report.problems.append(f"{page.where}: {EMPTY_REASON}")  # kept for its image
    if page.image is None and not text.strip():
        if page.ocr is None:
            report.problems.append(f"{page.where}: no text layer and images are off; skipped")
        else:
            report.problems.append(
                f"{page.where}: no text layer and images are off; skipped ({EMPTY_REASON})"
            )
        return None
    return text, source, confidence


# Over 60 lines on purpose: one streaming loop over files and pages, with OCR in flight.
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
    ocr: str = "auto",
    ocr_engine: str | None = None,
    ocr_workers: int | None = None,
) -> IngestReport:
    """Render and extract every page of the PDFs and image files into a corpus Parquet file.

    Parameters
    ----------
    inputs
        PDF and image (PNG, JPEG, TIFF) files and/or folders of them.
    out
        The corpus Parquet file (``doc_id`` is ``{file name}#p{page}``, pages 1-based).
    dpi, max_pixels
        Rendering resolution, capped at ``max_pixels`` pixels per page (image files are shrunk to
        the cap too).
    images
        False stores no images (much faster; for text encoders); pages that need OCR are still
        rendered for it.
    ocr
        ``auto`` reads pages whose text layer is empty or nearly so (and image files) with OCR
        when an engine is installed; ``always`` reads every page (the layer text goes to
        ``layer_text``); ``never`` keeps the text layer only.
    ocr_engine
        ``rapidocr`` or ``tesseract``; default: the first installed.
    ocr_workers
        OCR processes; default one per core.
    """
    import time

    inputs = list(inputs)
    if not dpi > 0 or dpi > 2400:
        raise InputError(f"--dpi must be between 0 and 2400 (exclusive of 0), got {dpi}")
    if max_pixels is not None and max_pixels < 1:
        raise InputError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    workers = default_workers() if ocr_workers is None else ocr_workers
    if workers < 1:
        raise InputError(f"--ocr-workers must be at least 1, got {workers}")
    engine = _resolve_ocr(ocr, ocr_engine)
    from tqdm.auto import tqdm

    report = IngestReport()
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    journal = _OcrJournal(journal_path(out_path))
    rows: dict[str, list[Any]] = {name: [] for name in CORPUS_SCHEMA.names}

    def wants_ocr(layer: str) -> bool:
        if engine is None:
            return False
        return ocr == "always" or len("".join(layer.split())) < NEARLY_EMPTY_CHARS

    def render(page: Any, *, images: bool, for_ocr: bool) -> tuple[bytes | None, bytes | None]:
        if for_ocr:
            return _render_for_ocr(
                page, dpi=dpi, max_pixels=max_pixels, image_format=image_format, images=images
            )
        return render_page(page, dpi=dpi, max_pixels=max_pixels, image_format=image_format), None

    def fit(image: Any, fmt: str) -> bytes:
        return _fit_image(image, max_pixels, fmt)

    def flush(writer: pq.ParquetWriter) -> None:
        if rows["doc_id"]:
            writer.write_table(pa.table(rows, schema=CORPUS_SCHEMA))
            journal.sync()
            for column in rows.values():
                column.clear()

    files = list(input_files(inputs, report))

    def pages() -> Iterator[_Page]:
        pdfium = None
        for path, kind in files:
            if kind == "pdf":
                pdfium = pdfium or require("pypdfium2", "pdf")
                yield from _pdf_pages(
                    path, pdfium, report, render=render, images=images, wants_ocr=wants_ocr
                )
            else:
                yield from _image_pages(
                    path,
                    report,
                    fit=fit,
                    images=images,
                    image_format=image_format,
                    wants_ocr=wants_ocr,
                )

    def write(page: _Page, writer: pq.ParquetWriter) -> None:
        bar.update(1)  # every page read counts, rejected or not: the bar's total is all pages
        finished = _finish(page, report)
        if finished is None:
            return
        text, source, confidence = finished
        for name, value in (
            ("doc_id", page.doc_id),
            ("image", page.image),
            ("text", text),
            ("source", page.source),
            ("page", page.page),
            ("num_pages", page.num_pages),
            ("title", page.title),
            ("author", page.author),
            ("text_source", source),
            ("ocr_confidence", confidence),
            ("layer_text", page.layer if ocr == "always" else None),
        ):
            rows[name].append(value)
        report.text_sources[source] = report.text_sources.get(source, 0) + 1
        report.pages += 1
        if len(rows["doc_id"]) >= rows_per_group:
            flush(writer)

    bar = tqdm(
        total=_page_count(files) if progress and files else None,
        desc="ingesting",
        unit="page",
        disable=not progress,
        file=sys.stderr,
    )
    pool = OcrPool(engine, workers=workers) if engine is not None else None
    completed = False
    try:
        with pq.ParquetWriter(tmp, CORPUS_SCHEMA) as writer:
            pending: deque[_Page] = deque()  # pages in file order, their OCR maybe in flight
            started: float | None = None  # the first OCR submitted: pages/s counts from there
            for page in pages():
                if page.blank:
                    page.ocr = Future()
                    page.ocr.set_result(PageText("", None, 0))
                elif page.ocr_image is not None and pool is not None and engine is not None:
                    page.ocr_key = _OcrJournal.key(engine, page.doc_id, page.ocr_image)
                    if page.ocr_key in journal.done:
                        page.ocr = Future()
                        page.ocr.set_result(journal.done[page.ocr_key])
                        report.ocr_resumed += 1
                    else:
                        started = time.perf_counter() if started is None else started
                        page.ocr = pool.submit(page.ocr_image)
                        page.ocr.add_done_callback(journal.keep(page.ocr_key))
                        report.ocr_pages += 1
                pending.append(page)
                # Write what is ready; wait for the oldest page only when enough OCR is in
                # flight to keep every worker busy, or too many pages wait behind it.
                while pending and (
                    pending[0].ocr is None
                    or pending[0].ocr.done()
                    or len(pending) > MAX_PENDING
                    or sum(p.ocr is not None and not p.ocr.done() for p in pending) > 2 * workers
                ):
                    write(pending.popleft(), writer)
                if report.ocr_pages:
                    bar.set_postfix(ocr=report.ocr_pages, refresh=False)
            while pending:
                write(pending.popleft(), writer)
            report.ocr_seconds = time.perf_counter() - started if started is not None else 0.0
            flush(writer)
        _check_worth_writing(report, out_path, inputs)
        tmp.replace(out_path)
        completed = True
    finally:
        if pool is not None:
            pool.close()
        bar.close()
        tmp.unlink(missing_ok=True)
        journal.close(remove=completed)
    for problem in report.problems:
        print(f"latemm ingest: {problem}", file=sys.stderr)
    return report
