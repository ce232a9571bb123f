"""Render a query's top pages from a run file as a self-contained HTML page: the query's id and
text, each page's thumbnail (click to enlarge to full resolution), its text with the query's
terms highlighted, every stage's and every field's score with a one-line legend, the relevant
pages marked when qrels are given and, given a vision encoder, a patch-level similarity heat
map over each page. Works on every kind of index (one encoder, named fields, sharded).

Every value that reaches the HTML is escaped (the run file and the index are untrusted data);
the page holds no script. Imports pyarrow, numpy, PIL (lazily) and ``index_store`` / ``latemm``
helpers only.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index_store.errors import InputError, LatemmError
from latemm.data.io import image_bytes, source_page_image
from latemm.index.collection import Lookup

SCORE_COLUMNS = ("score", "fde_score", "maxsim_score", "rerank_score")
TEXT_LIMIT = 6000  # characters of page text shown per page
FULL_WIDTH = 1600  # pixels: the enlarged page (the stored image when smaller)

LEGEND = {
    "score": "the final score the pages are ranked by",
    "fde_score": "first stage: inner product of the MUVERA fixed-dimensional encodings "
    "(approximates MaxSim)",
    "maxsim_score": "exact MaxSim: for each query token its best inner product with a page "
    "vector, summed",
    "rerank_score": "the MLLM reranker's relevance score",
}
FIELDS_LEGEND = {
    "score": "the fused score the pages are ranked by (--fusion: auto, rrf or weighted)",
    "fde_score": "the fused first-phase score that chose the candidates",
    "maxsim_score": "exact MaxSim of the first rescored field",
    "rerank_score": "the MLLM reranker's relevance score",
}
FIELD_KIND_LEGEND = {
    "bm25": "BM25 over the page text",
    "single": "inner product of one vector per page",
    "multi": "MaxSim over the page's vectors",
}

STOP_WORDS = frozenset(
    "a an and are as at be by for from has have how in is it its of on or that the this to "
    "was were what when where which who why will with does did do according many much we my me so "
    "if no up us you your they their there these those than then into also can not but all any "
    "about".split()
)


def _thumbnail(data: bytes, width: int = 320, heat: np.ndarray | None = None) -> str:
    """A JPEG data URL of the page, at most ``width`` pixels wide, with ``heat`` (an (h, w) grid
    over the page) overlaid in red where given: the page's lowest patch score is transparent,
    its highest 65% opaque."""
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
    an index cannot make the report embed arbitrary files (``latemm.data.io.read_image_file``, the
    policy the reranker follows too)."""
    try:
        return image_bytes(value, allow_files, refused="not shown"), None
    except InputError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"image not readable ({exc})"


def _as_strings(table: pa.Table, name: str) -> pa.Table:
    column = table.column(name)
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    return table.set_column(table.column_names.index(name), name, column)


def _load_rows(
    run_path: str | Path, query_id: str, k: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """The query's top ``k`` rows of the run (by rank when the ranks are numbers, else in file
    order) and the run's score columns (the stages', then ``score_<field>`` per field)."""
    try:
        run = pq.read_table(run_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{run_path} is not a readable run Parquet file ({exc})") from exc
    missing = [c for c in ("query_id", "doc_id", "rank") if c not in run.column_names]
    if missing:
        raise InputError(f"{run_path} is not a run file: no {', '.join(missing)} column")
    try:
        run = _as_strings(_as_strings(run, "query_id"), "doc_id")
    except pa.ArrowException as exc:
        raise InputError(
            f"{run_path}: query_id and doc_id must be strings or integers ({exc})"
        ) from exc
    run = run.filter(pc.equal(run.column("query_id"), query_id))
    try:
        order = pc.sort_indices(pc.cast(run.column("rank"), pa.int64()))
        run = run.take(order)
    except pa.ArrowException:
        pass  # ranks that are not numbers (a hand-edited file): keep the file's order
    rows: list[dict[str, Any]] = run.slice(0, k).to_pylist()
    if not rows:
        raise InputError(f"{run_path} has no results for query_id {query_id!r}")
    fields = [c for c in run.column_names if c.startswith("score_")]
    return rows, [c for c in SCORE_COLUMNS if c in run.column_names] + fields


def page_lookup(index_dir: str | Path) -> tuple[Lookup, dict[str, str], Any]:
    """A function doc_id -> the page's metadata (None when the index lacks it), the score
    legend of the index's fields (``score_<field>`` -> line) and its recorded encoder info
    (the vision field's for a fields index; None if none), for every kind of index
    (``Collection.page_lookup``)."""
    from latemm.index.collection import open_collection

    lookup, fields, encoder = open_collection(index_dir).page_lookup()
    legend = {}
    for spec in fields:
        what = FIELD_KIND_LEGEND.get(spec.kind, spec.kind)
        source = str((spec.encoder or {}).get("name_or_path") or "")
        if source.startswith("/"):  # a local folder: its name says enough
            source = Path(source).name if Path(source).name != "model" else Path(source).parent.name
        source = source or str(spec.options.get("embedding_column", ""))
        legend[f"score_{spec.name}"] = f"field {spec.name}: {what}" + (
            f" ({source})" if source else ""
        )
    return lookup, legend, encoder


def query_terms(query_text: str | None) -> list[str]:
    """The query's words worth highlighting: lower-cased, 2 letters or more (units such as
    "cm" count), no stop words; longest first."""
    words = re.findall(r"\w+", (query_text or "").lower())
    return sorted(
        {w for w in words if len(w) >= 2 and w not in STOP_WORDS}, key=lambda w: (-len(w), w)
    )


def highlight(text: str, terms: list[str]) -> tuple[str, int]:
    """``text`` HTML-escaped, with each word that starts with a query term in ``<mark>``;
    and the number of marked words."""
    if not terms:
        return html.escape(text), 0
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")\w*", re.I)
    out, last, hits = [], 0, 0
    for match in pattern.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        out.append(f"<mark>{html.escape(match.group(0))}</mark>")
        last, hits = match.end(), hits + 1
    out.append(html.escape(text[last:]))
    return "".join(out), hits


def _value(value: Any) -> str:
    """A score cell: numbers to 4 decimals, null as a dash, anything else escaped as given (a
    hand-edited run may hold strings)."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "—" if math.isnan(value) else f"{value:.4f}"
    try:
        return f"{float(str(value)):.4f}"
    except ValueError:
        return html.escape(str(value))


def _image_html(data: bytes, position: int, alt: str, query_text: str | None, encoder: Any) -> str:
    """The thumbnail (a link to the enlarged page), its heat map, and the enlarged page."""
    target = f"page-{position}"
    body = (
        f'<a href="#{target}" title="click to enlarge"><img class="page" '
        f'src="{_thumbnail(data)}" alt="{alt}"></a>'
    )
    if encoder is not None:
        heat = encoder.similarity_maps(query_text, [data])[0]
        body += (
            f'<img class="heatmap" src="{_thumbnail(data, heat=heat)}" '
            f'alt="heat map of {alt}" title="{heat.shape[0]}x{heat.shape[1]} patches">'
        )
    # The enlarged page is a background, not an <img>: one image element per page and heat map.
    full, (width, height) = _thumbnail(data, width=FULL_WIDTH), _size(data)
    return body + (
        f'<div class="lightbox" id="{target}"><a href="#_" title="close" class="full" '
        f"style=\"background-image:url('{full}');aspect-ratio:{width}/{height}\" "
        f'aria-label="{alt}, full size"></a></div>'
    )


def _size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return int(image.width), int(image.height)


def _card(
    position: int,
    row: dict[str, Any],
    meta: dict[str, Any],
    scores: list[str],
    relevance: Mapping[str, int] | None,
    terms: list[str],
    query_text: str | None,
    encoder: Any,
    folders: list[Path],
) -> str:
    """One result: rank, doc_id, relevance mark, image, text, source and scores."""
    doc_id = str(row["doc_id"])
    alt = html.escape(doc_id, quote=True)
    data, note = _page_image(meta.get("image"), folders)
    if data is None and note is None:  # no stored image: the page of its source PDF, if found
        try:
            data = source_page_image(meta.get("source"), meta.get("page"), folders)
        except (InputError, OSError) as exc:
            note = f"source page not rendered ({exc})"
    body = ""
    if data:
        try:
            body = _image_html(data, position, alt, query_text, encoder)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad images
            body, note = "", f"thumbnail skipped: the image cannot be shown ({exc})"
    if note:
        body = f'<p class="note">{html.escape(note)}</p>{body}'
    text = str(meta.get("text") or "")
    if text.strip():
        marked, hits = highlight(text[:TEXT_LIMIT], terms)
        more = f" (first {TEXT_LIMIT} of {len(text)} characters)" if len(text) > TEXT_LIMIT else ""
        body += (
            f'<details class="text" open><summary>page text: {hits} '
            f"query term(s) marked{more}</summary><pre>{marked}</pre></details>"
        )
    elif not data:
        body += '<p class="note">no image and no text stored for this page</p>'
    where = ", ".join(
        f"{name} {html.escape(str(meta[name]))}" for name in ("source", "page") if meta.get(name)
    )
    grade = (relevance or {}).get(doc_id)
    mark = ""
    if relevance is not None:
        mark = (
            f'<span class="rel">relevant (grade {int(grade)})</span>'
            if grade
            else '<span class="notrel">not judged relevant</span>'
        )
    table = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{_value(row.get(name))}</td></tr>" for name in scores
    )
    return (
        f'<div class="card{" relevant" if grade else ""}"><h3>#{html.escape(str(row["rank"]))} '
        f"{html.escape(doc_id)}</h3>{mark}"
        f"{f'<p class=src>{where}</p>' if where else ''}{body}"
        f'<table class="scores">{table}</table></div>'
    )


STYLE = (
    "body{font-family:sans-serif;margin:2em}.grid{display:flex;flex-wrap:wrap;gap:1em}"
    ".card{border:2px solid #ccc;padding:.5em;width:340px}.card.relevant{border-color:#1a8a2e;"
    "background:#f1fbf3}.card img.page,.card img.heatmap{max-width:320px;display:block;"
    "margin-bottom:6px;cursor:zoom-in}.rel{background:#1a8a2e;color:#fff;padding:1px 6px;"
    "border-radius:3px;font-size:13px}.notrel{color:#777;font-size:13px}.src{color:#555;"
    "font-size:12px;margin:4px 0}pre{white-space:pre-wrap;font-size:11px;max-height:180px;"
    "overflow:auto}mark{background:#ffe066}.note{color:#a33;font-size:12px}"
    ".lightbox{display:none}.lightbox:target{display:flex;position:fixed;inset:0;z-index:9;"
    "background:rgba(0,0,0,.92);align-items:flex-start;justify-content:center;overflow:auto}"
    ".lightbox a.full{display:block;width:min(95vw,1400px);margin:2vh auto;cursor:zoom-out;"
    "background-size:100% 100%}"
    "table.scores th{text-align:left;font-weight:normal;color:#444;padding-right:1em}"
    ".legend{font-size:13px;color:#333;font-family:monospace;list-style:none;padding:0}"
    ".query{font-size:18px}.qid{font-family:monospace}"
)


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
    qrels: Mapping[str, Mapping[str, int]] | None = None,
) -> str:
    """The HTML page of ``query_id``'s top ``k`` results in a run file, over any kind of index
    (one encoder, named fields or sharded).

    With ``encoder`` (a ``ColVisionEncoder``; needs ``query_text``) every page image gets a
    second thumbnail with the query's patch-level similarity heat map
    (``ColVisionEncoder.similarity_maps``). With ``qrels`` (query id -> doc id -> grade) the
    relevant pages are marked and the relevant pages missing from the top ``k`` listed. Page
    images stored in the index as file paths are read only under the ``allow_files`` folders;
    a page whose image cannot be read or decoded gets a note instead of a thumbnail. Every value
    from the run, the index, the queries and the qrels is HTML-escaped."""
    if encoder is not None and not query_text:
        raise InputError("a heat map needs the query's text: pass --queries QUERIES.parquet")
    rows, scores = _load_rows(run_path, query_id, k)
    try:
        lookup, field_legend, _ = page_lookup(index_dir)
    except LatemmError as exc:
        raise InputError(
            f"{index_dir}: cannot open the index the run was searched in: {exc}"
        ) from exc
    metas = [lookup(str(row["doc_id"])) for row in rows]
    absent = [str(row["doc_id"]) for row, meta in zip(rows, metas, strict=True) if meta is None]
    if absent:
        raise InputError(
            f"{len(absent)} doc_id(s) of {run_path} are not in the index {index_dir} "
            f"({', '.join(repr(d) for d in absent[:3])}): was the run made with another index? "
            "Pass the index the run was searched in"
        )
    folders = [Path(folder).resolve() for folder in allow_files or []]
    relevance = None if qrels is None else dict(qrels.get(query_id, {}))
    terms = query_terms(query_text)
    cards = [
        _card(i, row, meta or {}, scores, relevance, terms, query_text, encoder, folders)
        for i, (row, meta) in enumerate(zip(rows, metas, strict=True))
    ]
    base = FIELDS_LEGEND if field_legend else LEGEND
    legend = "".join(  # one line per score column: "name: what it is"
        "<li>"
        + html.escape(
            f"{name}: {base.get(name) or field_legend.get(name) or 'a score column of the run'}"
        )
        + "</li>"
        for name in scores
    )
    judged = ""
    if relevance is not None:
        shown = {str(row["doc_id"]) for row in rows}
        wanted = sorted(d for d, g in relevance.items() if g > 0)
        missed = [d for d in wanted if d not in shown]
        judged = (
            f"<p>Relevant pages (qrels): {len(wanted)}, of which {len(wanted) - len(missed)} "
            f"in this top {len(rows)}"
            + (f"; not retrieved here: {html.escape(', '.join(missed[:20]))}" if missed else "")
            + ". Relevant pages have a green frame.</p>"
        )
    title = html.escape(query_text or query_id)
    text_line = (
        f'<p class="query">{html.escape(query_text)}</p>'
        if query_text
        else "<p>(query text not given: pass --queries QUERIES.parquet)</p>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>latemm: {title}</title><style>{STYLE}</style></head><body>"
        f"<h1>Query <span class='qid'>{html.escape(query_id)}</span></h1>{text_line}"
        f"<p>Top {len(rows)} pages from {html.escape(str(run_path))} in "
        f"{html.escape(str(index_dir))}; click a page to enlarge it, query terms are "
        "<mark>marked</mark> in the page text.</p>"
        f"{judged}<ul class='legend'>{legend}</ul>"
        f"<div class='grid'>{''.join(cards)}</div></body></html>"
    )
