"""Render a query's top pages from a run file as a self-contained HTML page: thumbnails (or text
snippets for text-only pages) with each stage's score and, given a vision encoder, a patch-level
similarity heat map over each page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index_store import Index
from index_store.errors import InputError
from latemm.io import image_bytes

SCORE_COLUMNS = ("score", "fde_score", "maxsim_score", "rerank_score")


def _thumbnail(data: bytes, width: int = 320, heat: np.ndarray | None = None) -> str:
    """A JPEG data URL of the page, with ``heat`` (an (h, w) grid over the page) overlaid in red
    where given: the page's lowest patch score is transparent, its highest 65% opaque."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((width, width * 2))
    if heat is not None:
        span = float(heat.max() - heat.min()) or 1.0
        levels = ((heat - heat.min()) / span * 0.65 * 255).astype(np.uint8)
        alpha = Image.fromarray(levels).resize(image.size, Image.Resampling.BILINEAR)
        image = Image.composite(Image.new("RGB", image.size, (230, 20, 20)), image, alpha)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _page_image(value: Any, allow_files: list[Path]) -> tuple[bytes | None, str | None]:
    """The image bytes of an ``image`` cell, and a note when they are withheld: a cell that
    names a local file (``{"path": ...}`` without bytes) is read only under ``allow_files``, so
    an index cannot make the report embed arbitrary files (``latemm.io.read_image_file``, the
    policy the reranker follows too)."""
    try:
        return image_bytes(value, allow_files, refused="not shown"), None
    except InputError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"image not readable ({exc})"


def _load_rows(run_path: str | Path, query_id: str, k: int) -> list[dict[str, Any]]:
    try:
        run = pq.read_table(run_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{run_path} is not a readable run Parquet file ({exc})") from exc
    missing = [c for c in ("query_id", "doc_id", "rank") if c not in run.column_names]
    if missing:
        raise InputError(f"{run_path} is not a run file: no {', '.join(missing)} column")
    for name in SCORE_COLUMNS:
        if name not in run.column_names:
            run = run.append_column(name, pa.nulls(run.num_rows, pa.float32()))
    rows: list[dict[str, Any]] = (
        run.filter(pc.equal(run.column("query_id"), query_id))
        .sort_by("rank")
        .slice(0, k)
        .to_pylist()
    )
    if not rows:
        raise InputError(f"{run_path} has no results for query_id {query_id!r}")
    return rows


# Over 60 lines on purpose: the HTML page assembled top to bottom.
def render(
    run_path: str | Path,
    index_dir: str | Path,
    query_id: str,
    *,
    k: int = 10,
    query_text: str | None = None,
    encoder: Any = None,
    allow_files: list[str | Path] | None = None,
) -> str:
    """The HTML page of ``query_id``'s top ``k`` results in a run file.

    With ``encoder`` (a ``ColVisionEncoder``; needs ``query_text``) every page image gets a
    second thumbnail with the query's patch-level similarity heat map
    (``ColVisionEncoder.similarity_maps``). Page images stored in the index as file paths are
    read only under the ``allow_files`` folders; a page whose image cannot be read or decoded
    gets a note instead of a thumbnail. Every text is HTML-escaped."""
    if encoder is not None and not query_text:
        raise InputError("a heat map needs the query's text: pass --queries QUERIES.parquet")
    rows = _load_rows(run_path, query_id, k)
    index = Index.open(index_dir)
    absent = [row["doc_id"] for row in rows if row["doc_id"] not in index]
    if absent:
        raise InputError(
            f"{len(absent)} doc_id(s) of {run_path} are not in the index {index_dir} "
            f"({', '.join(repr(d) for d in absent[:3])}): was the run made with another index? "
            "Pass the index the run was searched in"
        )
    folders = [Path(folder).resolve() for folder in allow_files or []]
    cards = []
    for row in rows:
        meta = index.get(row["doc_id"]).metadata
        data, note = _page_image(meta.get("image"), folders)
        alt = html.escape(row["doc_id"])
        body = ""
        if data:
            try:
                body = f'<img src="{_thumbnail(data)}" alt="{alt}">'
                if encoder is not None:
                    heat = encoder.similarity_maps(query_text, [data])[0]
                    body += (
                        f'<img class="heatmap" src="{_thumbnail(data, heat=heat)}" '
                        f'alt="heat map of {alt}" title="{heat.shape[0]}x{heat.shape[1]} patches">'
                    )
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad images
                body, note = "", f"thumbnail skipped: the image cannot be shown ({exc})"
        if not body:
            body = f"<pre>{html.escape(str(meta.get('text') or '')[:1200])}</pre>"
        if note:
            body = f'<p class="note">{html.escape(note)}</p>{body}'
        scores = "".join(
            f"<tr><th>{name}</th><td>{'—' if row[name] is None else f'{row[name]:.4f}'}</td></tr>"
            for name in SCORE_COLUMNS
        )
        cards.append(
            f'<div class="card"><h3>#{row["rank"]} {html.escape(row["doc_id"])}</h3>{body}'
            f'<table class="scores">{scores}</table></div>'
        )
    title = html.escape(query_text or query_id)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>latemm: {title}</title><style>"
        "body{font-family:sans-serif;margin:2em}.grid{display:flex;flex-wrap:wrap;gap:1em}"
        ".card{border:1px solid #ccc;padding:.5em;width:340px}.card img{max-width:320px;display:block;margin-bottom:6px}"
        "pre{white-space:pre-wrap;font-size:11px;max-height:300px;overflow:auto}"
        "</style></head><body>"
        f"<h1>{title}</h1><p>Top {len(rows)} pages from {html.escape(str(run_path))}</p>"
        f"<div class='grid'>{''.join(cards)}</div></body></html>"
    )
