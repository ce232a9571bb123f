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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index_store import Index
from index_store.errors import InputError
from latemm.io import image_bytes


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


def render(
    run_path: str | Path,
    index_dir: str | Path,
    query_id: str,
    *,
    k: int = 10,
    query_text: str | None = None,
    encoder: Any = None,
) -> str:
    """The HTML page of ``query_id``'s top ``k`` results in a run file.

    With ``encoder`` (a ``ColVisionEncoder``; needs ``query_text``) every page image gets a
    second thumbnail with the query's patch-level similarity heat map
    (``ColVisionEncoder.similarity_maps``)."""
    if encoder is not None and not query_text:
        raise InputError("a heat map needs the query's text: pass --queries QUERIES.parquet")
    run = pq.read_table(run_path)
    rows = (
        run.filter(pc.equal(run.column("query_id"), query_id))
        .sort_by("rank")
        .slice(0, k)
        .to_pylist()
    )
    if not rows:
        raise InputError(f"{run_path} has no results for query_id {query_id!r}")
    index = Index.open(index_dir)
    cards = []
    for row in rows:
        meta = index.get(row["doc_id"]).metadata if row["doc_id"] in index else {}
        data = image_bytes(meta.get("image"))
        alt = html.escape(row["doc_id"])
        if data:
            body = f'<img src="{_thumbnail(data)}" alt="{alt}">'
            if encoder is not None:
                heat = encoder.similarity_maps(query_text, [data])[0]
                body += (
                    f'<img class="heatmap" src="{_thumbnail(data, heat=heat)}" '
                    f'alt="heat map of {alt}" title="{heat.shape[0]}x{heat.shape[1]} patches">'
                )
        else:
            body = f"<pre>{html.escape((meta.get('text') or '')[:1200])}</pre>"
        scores = "".join(
            f"<tr><th>{name}</th><td>{'—' if row[name] is None else f'{row[name]:.4f}'}</td></tr>"
            for name in ("score", "fde_score", "maxsim_score", "rerank_score")
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
