"""Optical character recognition of page images: engines, reading order and a worker pool.

Two engines read a page image into text lines with boxes and confidences: ``rapidocr`` (the
PP-OCRv4 ONNX models that ship inside the ``rapidocr-onnxruntime`` wheel, on the CPU; ``pip
install 'latemm[ocr]'``) and ``tesseract`` (the ``tesseract`` binary, called as a subprocess, when
it is on the PATH). ``reading_order`` puts the lines into blocks read top to bottom and left to
right (a recursive XY cut: columns are split at gutters before rows, so two columns are never
interleaved line by line). ``OcrPool`` runs an engine in worker processes, one ONNX thread each.

Imports numpy, Pillow and, lazily, the engine; nothing of ``latemm``'s model code.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from index_store.errors import InputError, MissingDependencyError

ENGINES = ("rapidocr", "tesseract")
OCR_MODES = ("auto", "always", "never")
EMPTY_REASON = "no text found by OCR"


@dataclass(frozen=True)
class OcrLine:
    """One line of text found on a page: its box in pixels, its text and the engine's
    confidence in [0, 1]."""

    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    confidence: float


@dataclass(frozen=True)
class PageText:
    """What OCR read on one page: the text in reading order (blocks separated by a blank line),
    the mean line confidence (None when no line was found) and the number of lines."""

    text: str
    confidence: float | None
    lines: int


def engine_available(name: str) -> bool:
    """Whether the engine ``name`` can run here (its package or binary is installed)."""
    if name == "rapidocr":
        import importlib.util

        return importlib.util.find_spec("rapidocr_onnxruntime") is not None
    if name == "tesseract":
        return shutil.which("tesseract") is not None
    raise InputError(f"unknown OCR engine {name!r}; expected one of {', '.join(ENGINES)}")


def default_engine() -> str | None:
    """The first installed engine (rapidocr before tesseract), or None."""
    return next((name for name in ENGINES if engine_available(name)), None)


# The recogniser's probability of a space is multiplied by this before decoding. PP-OCRv4's
# Chinese-English model, trained mostly on text without spaces, drops most spaces between English
# words (for 40-character lines of 26 px sans: "Quarterlyrevenuegrewbyelevenpercent"); where
# a space is the runner-up a bias of 10 restores it (CER 0.07 -> 0.0 on that page), and the
# mean word length on a real paper page falls from 7.1 to 6.5 characters without splitting words.
SPACE_BIAS = 10.0


class _SpaceBiasedDecode:
    """rapidocr's CTC decoder with the space class's probability multiplied by ``bias``
    (capped at 1)."""

    def __init__(self, decode: Any, space: int, bias: float) -> None:
        self._decode = decode
        self._space = space
        self._bias = bias

    def __call__(self, preds: Any, return_word_box: bool = False, **kwargs: Any) -> Any:
        import numpy as np

        preds = preds.copy()  # (N, T, classes) probabilities
        preds[:, :, self._space] = np.minimum(preds[:, :, self._space] * self._bias, 1.0)
        return self._decode(preds, return_word_box, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decode, name)


class RapidOcrEngine:
    """PP-OCRv4 detection, angle classification and recognition through ``rapidocr-onnxruntime``
    (the models ship in its wheel, so nothing is downloaded), with spaces restored
    (``SPACE_BIAS``)."""

    name = "rapidocr"

    def __init__(self, *, threads: int = 1, space_bias: float = SPACE_BIAS) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise MissingDependencyError(
                "the rapidocr OCR engine is not installed: pip install 'rapidocr-onnxruntime' "
                "(or pip install 'latemm[ocr]'), or pick --ocr-engine tesseract or --ocr never"
            ) from exc
        self._ocr = RapidOCR(
            intra_op_num_threads=threads, inter_op_num_threads=1, print_verbose=False
        )
        recognizer = getattr(self._ocr, "text_rec", None)
        decode = getattr(recognizer, "postprocess_op", None)
        space = getattr(decode, "dict", {}).get(" ")
        if recognizer is not None and space is not None and space_bias != 1.0:
            recognizer.postprocess_op = _SpaceBiasedDecode(decode, space, space_bias)

    def read(self, image: Any) -> list[OcrLine]:
        """The lines on a PIL image, in the engine's order."""
        import numpy as np

        found, _ = self._ocr(np.asarray(image.convert("RGB")))
        lines = []
        for box, text, score in found or []:
            xs = [float(p[0]) for p in box]
            ys = [float(p[1]) for p in box]
            if text.strip():
                lines.append(
                    OcrLine(min(xs), min(ys), max(xs), max(ys), text.strip(), float(score))
                )
        return lines


class TesseractEngine:
    """The ``tesseract`` binary (Debian's ``tesseract-ocr``), run on a PNG through stdin; its TSV
    output gives words with boxes and confidences, grouped here into its lines."""

    name = "tesseract"

    def __init__(self, *, threads: int = 1, language: str = "eng") -> None:
        binary = shutil.which("tesseract")
        if binary is None:
            raise MissingDependencyError(
                "the tesseract OCR engine needs the tesseract binary on the PATH: apt-get install "
                "tesseract-ocr (or use the default engine: pip install 'latemm[ocr]')"
            )
        self._binary = binary
        self._language = language
        self._env = {**os.environ, "OMP_THREAD_LIMIT": str(threads)}

    def read(self, image: Any) -> list[OcrLine]:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        done = subprocess.run(
            [self._binary, "stdin", "stdout", "-l", self._language, "tsv"],
            input=buffer.getvalue(),
            capture_output=True,
            env=self._env,
            check=False,
        )
        if done.returncode != 0:
            raise InputError(f"tesseract failed: {done.stderr.decode(errors='replace').strip()}")
        return parse_tesseract_tsv(done.stdout.decode("utf-8", errors="replace"))


def parse_tesseract_tsv(tsv: str) -> list[OcrLine]:
    """Tesseract's TSV (one row per word, keyed by block, paragraph and line) as lines."""
    words: dict[tuple[str, str, str], list[list[str]]] = {}
    for row in tsv.splitlines()[1:]:
        word = row.split("\t")
        if len(word) < 12 or word[0] != "5" or not word[11].strip():
            continue
        words.setdefault((word[2], word[3], word[4]), []).append(word)
    lines = []
    for cells in words.values():
        left = [float(c[6]) for c in cells]
        top = [float(c[7]) for c in cells]
        right = [float(c[6]) + float(c[8]) for c in cells]
        bottom = [float(c[7]) + float(c[9]) for c in cells]
        confidences = [max(float(c[10]), 0.0) / 100.0 for c in cells]
        lines.append(
            OcrLine(
                min(left),
                min(top),
                max(right),
                max(bottom),
                " ".join(c[11].strip() for c in cells),
                sum(confidences) / len(confidences),
            )
        )
    return lines


def open_engine(name: str, *, threads: int = 1) -> RapidOcrEngine | TesseractEngine:
    """The engine called ``name`` (one of ``ENGINES``), or MissingDependencyError with the
    install line."""
    if name == "rapidocr":
        return RapidOcrEngine(threads=threads)
    if name == "tesseract":
        return TesseractEngine(threads=threads)
    raise InputError(f"unknown OCR engine {name!r}; expected one of {', '.join(ENGINES)}")


def _cuts(spans: list[tuple[float, float]], min_gap: float) -> list[tuple[float, float]]:
    """The gaps (start, end) at least ``min_gap`` wide that no span covers, in order."""
    ordered = sorted(spans)
    gaps = []
    reach = ordered[0][1]
    for start, end in ordered[1:]:
        if start - reach >= min_gap:
            gaps.append((reach, start))
        reach = max(reach, end)
    return gaps


def _split(lines: list[OcrLine], cuts: list[float], *, vertical: bool) -> list[list[OcrLine]]:
    parts: list[list[OcrLine]] = [[] for _ in range(len(cuts) + 1)]
    for line in lines:
        centre = (line.x0 + line.x1) / 2 if vertical else (line.y0 + line.y1) / 2
        parts[sum(centre > c for c in cuts)].append(line)
    return [part for part in parts if part]


def _xy_cut(lines: list[OcrLine], unit: float, blocks: list[list[OcrLine]]) -> None:
    """Append the blocks of ``lines`` in reading order. Columns first: a vertical gutter at least
    one line height wide that no line crosses splits the region left to right. Otherwise the
    region splits top to bottom at its widest horizontal gaps (those within 80% of the widest,
    and at least 0.8 of a line height), which separates a full-width title from the columns under
    it; a region with neither is one block."""
    if len(lines) > 1:
        gutters = _cuts([(line.x0, line.x1) for line in lines], unit)
        if gutters:
            for part in _split(lines, [(a + b) / 2 for a, b in gutters], vertical=True):
                _xy_cut(part, unit, blocks)
            return
        gaps = _cuts([(line.y0, line.y1) for line in lines], 0.0)
        widest = max((b - a for a, b in gaps), default=0.0)
        if widest >= 0.8 * unit:
            cuts = [(a + b) / 2 for a, b in gaps if b - a >= 0.8 * widest]
            for part in _split(lines, cuts, vertical=False):
                _xy_cut(part, unit, blocks)
            return
    blocks.append(lines)


def _rows(block: list[OcrLine]) -> list[list[OcrLine]]:
    """A block's lines grouped into rows (lines whose vertical centres fall within the row's
    extent), each sorted left to right."""
    rows: list[list[OcrLine]] = []
    for line in sorted(block, key=lambda line: (line.y0 + line.y1) / 2):
        centre = (line.y0 + line.y1) / 2
        if rows and rows[-1][0].y0 <= centre <= rows[-1][0].y1:
            rows[-1].append(line)
        else:
            rows.append([line])
    return [sorted(row, key=lambda line: line.x0) for row in rows]


def reading_order(lines: Sequence[OcrLine]) -> list[list[str]]:
    """The lines as blocks in reading order, each block a list of text rows.

    Blocks are read top to bottom and, side by side, left to right; within a block, rows top to
    bottom and the lines of a row left to right.
    """
    lines = [line for line in lines if line.text.strip()]
    if not lines:
        return []
    unit = statistics.median(line.y1 - line.y0 for line in lines)
    blocks: list[list[OcrLine]] = []
    _xy_cut(lines, max(unit, 1.0), blocks)
    return [[" ".join(line.text for line in row) for row in _rows(block)] for block in blocks]


def page_text(lines: Sequence[OcrLine]) -> PageText:
    """The page's text in reading order (rows joined by newlines, blocks by a blank line) and
    its mean line confidence."""
    blocks = reading_order(lines)
    kept = [line for line in lines if line.text.strip()]
    confidence = sum(line.confidence for line in kept) / len(kept) if kept else None
    return PageText("\n\n".join("\n".join(rows) for rows in blocks), confidence, len(kept))


def read_image(engine: RapidOcrEngine | TesseractEngine, image: bytes) -> PageText:
    """OCR of one encoded image (PNG, JPEG, TIFF, ...). An image Pillow cannot decode raises
    InputError naming the reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as opened:
            opened.load()
            decoded = opened.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise InputError(f"the OCR engine cannot read this image ({exc})") from exc
    return page_text(engine.read(decoded))


_WORKER_ENGINE: RapidOcrEngine | TesseractEngine | None = None


def _start_worker(name: str) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = open_engine(name, threads=1)


def _read_in_worker(image: bytes) -> PageText | str:
    """OCR in a worker: the page's text, or the error message (errors cross the process
    boundary as text so one bad page never breaks the pool)."""
    if _WORKER_ENGINE is None:
        raise RuntimeError("the OCR worker was not started")  # unreachable: initializer ran
    try:
        return read_image(_WORKER_ENGINE, image)
    except InputError as exc:
        return str(exc)


def default_workers() -> int:
    """One OCR worker per core this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class OcrPool:
    """An engine in ``workers`` processes (or in this process when ``workers`` is 1); ``submit``
    returns a future of a PageText or of an error message. The processes start on the first
    submit, so an ingest that OCRs nothing starts none."""

    def __init__(self, engine: str, *, workers: int) -> None:
        if workers < 1:
            raise InputError(f"--ocr-workers must be at least 1, got {workers}")
        self.engine = engine
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._local: RapidOcrEngine | TesseractEngine | None = None
        # Fail now, in this process, with the install line, rather than in every worker.
        if not engine_available(engine):
            open_engine(engine)

    def submit(self, image: bytes) -> Future[PageText | str]:
        if self.workers == 1:
            future: Future[PageText | str] = Future()
            if self._local is None:
                self._local = open_engine(self.engine, threads=1)
            try:
                future.set_result(read_image(self._local, image))
            except InputError as exc:
                future.set_result(str(exc))
            return future
        if self._pool is None:
            # forkserver: workers fork from a clean server process, not from this one with its
            # threads (tqdm's monitor, torch's pools).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["latemm.data.ocr"])
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(self.engine,),
            )
        return self._pool.submit(_read_in_worker, image)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> OcrPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
