"""The experiments report: run the experiments, then regenerate ``experiments/RESULTS.md`` from
the JSON they wrote and the hand-written fragments in ``experiments/writeups/``.

    python -m experiments.report --run --quick     # every experiment, quick sizes (minutes)
    python -m experiments.report --run             # full sizes (hours)
    python -m experiments.report                   # re-render RESULTS.md from committed files

RESULTS.md is never edited by hand (tests/test_report.py checks that it is exactly what this
module renders). Each table is generated from a JSON in ``experiments/results/`` and names the
machine, command and commit recorded there. Text a person wrote (verdicts, analyses, commands,
tables of runs whose JSON was not kept) lives in ``experiments/writeups/<name>.md``, included
verbatim:

- ``ORDER`` lists the report's sections in reading order. A name with a generator (``SECTIONS``,
  ``bench_scale``, ``findings``) is rendered from JSON and followed by ``writeups/<name>.md`` if
  that file exists; any other name is a hand-written section, ``writeups/<name>.md`` alone.
- Each experiment renders its own section: ``render_section(record, sources)`` at the end of
  ``experiments/<name>.py`` (``experiments.render`` holds the table helpers and ``Sources``,
  what a section may read beyond its record); this module only assembles them in ``ORDER``.
- A few generators read fragments at fixed places: ``<name>.provenance.md`` is appended to the
  italic provenance line before its final period, ``eval_fusion.intro.md`` opens section 4b,
  ``bench_index.goal5.md`` and ``bench_index.int8.md`` follow section 2's two tables.
- A fragment line ``<!-- table: NAME -->`` is replaced by the table ``FRAGMENT_TABLES[NAME]``
  renders from its JSON, so a write-up never copies figures a results file holds.

To add a note:

1. Edit the fragment where it belongs (a paragraph after section 2's tables goes in
   ``writeups/bench_index.goal5.md``, a new subsection after 7c in a new
   ``writeups/7c_<topic>.md``, whose name you add to ``ORDER`` after ``"7c_page_magnitudes"``).
   A table whose figures a results JSON holds is not copied: write a function that renders it,
   register it in ``FRAGMENT_TABLES`` and put its ``<!-- table: NAME -->`` line in the fragment.
2. Run ``python -m experiments.report``; commit the fragment, RESULTS.md and any JSON together.

Fragments describe the committed runs: after re-running an experiment, re-read its fragments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.common import RESULTS
from experiments.render import Sources
from experiments.render import provenance as _provenance
from experiments.render import sig3 as _sig3
from experiments.render import table as _table

WRITEUPS = Path(__file__).resolve().parent / "writeups"

EXPERIMENTS = [
    "bench_fde",
    "bench_index",
    "bench_search",
    "eval_text",
    "eval_fusion",
    "eval_tune",
    "mteb_vaswani",
    "storage_quality",
    "candidates",
    "bench_encoders",
    "bench_ray",
]


def _load(name: str, quick: bool) -> dict[str, Any] | None:
    """``<name>_quick.json`` first with ``quick``; otherwise the newer of ``<name>.json`` and
    ``<name>_quick.json`` by recorded date (``Sources.load``)."""
    return _sources().load(name, quick)


def writeup(name: str) -> str:
    """The hand-written fragment ``experiments/writeups/<name>.md``, without its final newline.

    Raises
    ------
    FileNotFoundError
        If the fragment is missing: the message names the file and what reads it.
    """
    path = WRITEUPS / f"{name}.md"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: RESULTS.md includes it (experiments/report.py names it); "
            "restore it from git or remove its name from report.py"
        )
    text = path.read_text(encoding="utf-8").rstrip("\n")
    return _TABLE_MARK.sub(lambda m: _fragment_table(m.group(1), path), text)


# A line of its own in a fragment, replaced by the generated table of that name (FRAGMENT_TABLES).
_TABLE_MARK = re.compile(r"^<!-- table: ([\w.-]+) -->$", re.MULTILINE)


def _fragment_table(name: str, fragment: Path) -> str:
    """The table a fragment's ``<!-- table: NAME -->`` line stands for, rendered from its JSON."""
    if name not in FRAGMENT_TABLES:
        raise ValueError(
            f"{fragment} asks for table {name!r}, which experiments/report.py does not define; "
            f"known: {', '.join(sorted(FRAGMENT_TABLES))}"
        )
    sources, make = FRAGMENT_TABLES[name]
    paths = [RESULTS / f"{source}.json" for source in sources]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        return f"*(Table {name} not rendered: missing {', '.join(missing)}.)*"
    return make(*[json.loads(path.read_text(encoding="utf-8")) for path in paths])


def _optional_writeup(name: str) -> str:
    """``writeup(name)`` if that fragment exists, else an empty string."""
    return writeup(name) if (WRITEUPS / f"{name}.md").is_file() else ""


def table_codecs(r: dict[str, Any]) -> str:
    """Section 5b: each faiss codec's size and recall with every page rescored."""
    rows = [
        [x["codec"], x["bytes_per_token"], x["kib_per_page_tokens"], f"{x['recall@10']:.3f}"]
        for x in r["rows"]
    ]
    header = ["codec", "bytes/token", "KiB/page (tokens only)", "recall@10 (every page rescored)"]
    return _table(header, rows)


def table_shannon(r: dict[str, Any]) -> str:
    """Section 5b: Shannon's least RMS error of any code of a given size on the generator."""
    bound = r["shannon_bound"]
    return _table(
        ["bytes per token", *[str(x["bytes_per_token"]) for x in bound]],
        [
            [
                "least RMS error of any code (Shannon)",
                *[f"{x['rms_error_at_least']:.3f}" for x in bound],
            ]
        ],
    )


def table_first_stage_segments(r: dict[str, Any]) -> str:
    """Section 6b: first-stage cost of the same documents committed as 1, 10 or 100 segments."""
    rows = [
        [
            x["layout"],
            x["segments"],
            f"{x['documents']:,}",
            f"{x['ms_per_query']:.2f}",
            f"{x['disk_bytes_per_document']:,.0f}",
        ]
        for x in r["segments"]["rows"]
    ]
    header = ["layout", "segments", "documents", "first-stage ms/query", "disk bytes/page"]
    return _table(header, rows)


def table_first_stage_timing(r: dict[str, Any]) -> str:
    """Section 6b: the global fast-scan structure over 10k and 100k documents' codes."""
    rows = [
        [
            f"{x['documents']:,}",
            x["segments"],
            f"{x['ms_per_query_one_at_a_time']:.2f}",
            f"{x['ms_per_query_2pct_deleted']:.2f}",
            f"{x['queries_per_s_batch']:.0f}",
            f"{x['assemble_s']:.2f}",
        ]
        for x in r["timing"]
    ]
    header = ["documents", "segments", "ms/query (one at a time)", "ms/query, 2% deleted"]
    return _table([*header, "queries/s (batch of 16)", "assemble s"], rows)


def table_maxsim_kernel(r: dict[str, Any]) -> str:
    """Section 7c: each MaxSim method's GFLOP/s for 1 and 8 queries against its dtype's limit."""
    one, batch = r["kernel"][0]["methods"], r["kernel"][1]["methods"]
    rows = []
    for name, x in one.items():
        y = batch[name]
        if "limit" not in x:  # a bare product: the limit the others are measured against
            rows.append([name, f"{x['gflops']:.1f}", "-", f"{y['gflops']:.1f}", "-", "-"])
            continue
        rows.append(
            [
                name,
                f"{x['gflops']:.1f}",
                f"{x['fraction_of_limit']:.0%} of {x['limit']}",
                f"{y['gflops']:.1f}",
                f"{y['fraction_of_limit']:.0%} of {y['limit']}",
                f"{y['max_abs_error']:.1e}",
            ]
        )
    header = ["method", "1 query: GFLOP/s", "of limit", "8 queries: GFLOP/s", "of limit"]
    return _table([*header, "max abs. error (8 q.)"], rows)


def table_maxsim_rescore(r: dict[str, Any]) -> str:
    """Section 7c: the whole rescore path, old against new, per candidate count and batch."""
    rows = [
        [
            x["candidates"],
            x["queries"],
            f"{x['old']['ms_per_query']:.1f}",
            f"{x['new']['ms_per_query']:.1f}",
            f"{x['speedup']:.1f}x",
            f"{x['new']['gflops']:.1f}",
            f"{x['new']['fraction_of_limit']:.0%}",
            f"{x['exact_share_query0']:.1%}",
        ]
        for x in r["rescore"]
    ]
    header = ["C", "queries", "old ms/query", "new ms/query", "speedup", "new GFLOP/s"]
    return _table([*header, "new, of float16 limit", "rescored in float32 (query 0)"], rows)


def table_int8_in_place(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any], decode: dict[str, Any]
) -> str:
    """Section 3b (cont. 2): three searches of one 100k int8 index (a: after profiling, b: cold
    page cache, c: ``--warm``) and the float16-decode pass's p50 where it measured the same C."""
    before = {x["candidates"]: x for x in decode["latemm"]}
    rows = []
    for xa, xb, xc in zip(a["latemm"], b["latemm"], c["latemm"], strict=True):
        old = before.get(xa["candidates"])
        rows.append(
            [
                xa["candidates"],
                xa["recall@10"],
                _sig3(xa["p50_ms"]),
                _sig3(xb["p50_ms"]),
                _sig3(xc["p50_ms"]),
                _sig3(xc["p95_ms"]),
                f"{xc['batch_queries_per_s']:.1f}",
                _sig3(old["p50_ms"]) if old else "",
            ]
        )
    header = ["C", "recall@10", "p50 ms (a)", "p50 ms (b) cold", "p50 ms (c) warm", "p95 ms (c)"]
    header += ["queries/s batched (c)", "p50 ms, float16-decode pass (3b cont., other sample)"]
    return _table(header, rows)


def table_refine(r: dict[str, Any]) -> str:
    """Section 5c: storages with and without a refine copy, bytes per page split into what a
    search reads for every candidate and the copy, recall@10 (and nDCG@10 on Vaswani)."""
    rows = []
    for data, key in (("ColPali-shaped", "colpali"), ("Vaswani MiniLM", "vaswani")):
        for x in r.get(key, []):
            copy = x["copy_bytes_per_doc"]
            rows.append(
                [
                    f"{data} ({x['pages']:,} pages)" if "pages" in x else data,
                    x["storage"],
                    x["depth"] if x["depth"] is not None else "-",
                    f"{(x['bytes_per_doc'] - copy) / 1000:.1f}",
                    f"{copy / 1000:.1f}" if copy else "-",
                    f"{x['recall@10']:.3f}",
                    f"{x['ndcg@10']:.3f}" if "ndcg@10" in x else "",
                ]
            )
    header = ["data", "storage", "depth", "kB/page without the copy", "kB/page copy"]
    return _table(header + ["recall@10", "nDCG@10"], rows)


def _scale_row(x: dict[str, Any]) -> list[Any]:
    """A bench_scale search row: depth, C, recall@10, p50, p95, batched queries/s."""
    return [
        x["refine_depth"],
        x["candidates"],
        f"{x['recall@10']:.3f}",
        _sig3(x["p50_ms"]),
        _sig3(x["p95_ms"]),
        f"{x['batch_queries_per_s']:.1f}",
    ]


def table_refine_scale(r: dict[str, Any]) -> str:
    """Section 5c: 100k ColPali-shaped pages, pq1 codes with an int8 copy, per depth and C."""
    rows = [_scale_row(x) for x in r["latemm"]]
    header = ["depth", "C", "recall@10", "p50 ms", "p95 ms", "queries/s batched"]
    return _table(header, rows)


def table_plan_10m(int8: dict[str, Any], refined: dict[str, Any]) -> str:
    """Section 7b (cont.): 10M ColPali pages as 100 shards of 100k, from today's 100k runs:
    int8 storage (C=320) and pq1 codes with an int8 copy (C=384, depth 128), 2 cores per shard
    on 32-core nodes (16 shards a node)."""
    shards, per_node = 100, 16
    nodes = math.ceil(shards / per_node)
    rows = []
    for label, r, pick in (
        ("int8 (C=320)", int8, lambda x: x["candidates"] == 320),
        (
            "pq1 + int8 copy (C=384, depth 128)",
            refined,
            lambda x: x["candidates"] == 384 and x["refine_depth"] == 128,
        ),
    ):
        (x,) = [x for x in r["latemm"] if pick(x)]
        disk = r["disk"]["by_file"]
        copy = disk.get("refine-vectors.npy", 0) + disk.get("refine-scales.npy", 0)
        resident = (r["disk"]["manifest_files_bytes"] - copy) * per_node / 1e9
        rows.append(
            [
                label,
                f"{x['recall@10']:.2f}",
                _sig3(x["p50_ms"]),
                f"{shards * 2 * x['p50_ms'] / 1e3:.1f}",
                nodes,
                f"{r['disk']['manifest_files_bytes'] * per_node / 1e9:.0f}",
                f"{resident:.0f}",
                f"{x['batch_queries_per_s']:.0f}",
            ]
        )
    header = ["storage", "recall@10 per shard", "shard p50 ms", "core-s per query", "nodes"]
    header += ["GB on disk per node", "GB to keep in memory per node", "queries/s (batched)"]
    return _table(header, rows)


def table_ab_refine(*runs: dict[str, Any]) -> str:
    """Search latency of one index from two checkouts, alternating (``experiments.search_latency``;
    runs given as before, after, before, after): 5c (cont.) on the 100k refine index, 7c (cont.
    3) on a 10k one."""
    rows = []
    for i, c in enumerate(x["candidates"] for x in runs[0]["rows"]):
        p50 = [r["rows"][i]["p50_ms"] for r in runs]
        qps = [r["rows"][i]["batch_queries_per_s"] for r in runs]
        before, after = p50[0::2], p50[1::2]
        rows.append(
            [
                c,
                " / ".join(_sig3(v) for v in before),
                " / ".join(_sig3(v) for v in after),
                f"{statistics.mean(after) / statistics.mean(before):.2f}",
                " / ".join(f"{v:.1f}" for v in qps[0::2]),
                " / ".join(f"{v:.1f}" for v in qps[1::2]),
            ]
        )
    header = ["C", "p50 ms before", "p50 ms after", "after / before (means)"]
    return _table(header + ["queries/s batched before", "after"], rows)


def table_segments(*runs: dict[str, Any]) -> str:
    """Section 7c (cont. 3): Vaswani float16, 83 appended segments against one compacted,
    checkouts before and after alternating (``experiments.bench_segments``; runs given as
    before, after, before, after)."""
    rows = []
    for i, r in enumerate(runs):
        appended, compacted = r["indexes"]["appended"], r["indexes"]["compacted"]
        rows.append(
            [
                ("before" if i % 2 == 0 else "after") + f" ({r['commit']})",
                f"{appended['segments']} / {compacted['segments']}",
                f"{_sig3(appended['p50_ms'])} / {_sig3(compacted['p50_ms'])}",
                f"{r['appended_over_compacted']['p50']:.2f}",
                f"{appended['batch_queries_per_s']:.1f} / {compacted['batch_queries_per_s']:.1f}",
            ]
        )
    header = ["checkout", "segments", "p50 ms", "p50 appended / compacted"]
    return _table(header + ["queries/s batched"], rows)


def table_fusion_latency(*runs: dict[str, Any]) -> str:
    """Section 4b (cont.): one fused query (a ColPali-shaped MaxSim field and BM25), checkouts
    before and after alternating (``experiments.bench_fusion_latency``; runs given as before,
    after, before, after)."""
    rows = []
    for i, x in enumerate(runs[0]["rows"]):
        p50 = [r["rows"][i]["p50_ms"] for r in runs]
        before, after = p50[0::2], p50[1::2]
        rows.append(
            [
                x["fusion"],
                x["k"],
                " / ".join(_sig3(v) for v in before),
                " / ".join(_sig3(v) for v in after),
                f"{statistics.mean(before) / statistics.mean(after):.1f}x",
            ]
        )
    return _table(["fusion", "k", "p50 ms before", "p50 ms after", "speed-up (means)"], rows)


# Tables that hand-written fragments place with a <!-- table: NAME --> line: NAME -> (the
# results JSONs it reads, without .json; the function that renders it from those records).
def table_cpu_encode(r: dict[str, Any]) -> str:
    """Section 7c: MiniLM on the CPU, float32 against ``--quantize int8``, same run."""
    speed = ", ".join(f"{c['int8_speedup']:.2f}" for c in r["chunks"])
    rows = [
        [
            kind,
            r["pages_per_s"][kind],
            r["tokens_per_s"][kind],
            1.0 if kind == "float32" else r["recall_at_10_int8_vs_float32_exact"],
            "n/a" if r["ndcg_at_10"][kind] is None else r["ndcg_at_10"][kind],
        ]
        for kind in ("float32", "int8")
    ]
    header = ["MiniLM", "pages/s", "tokens/s", "recall@10 vs float32 (exact)", "nDCG@10"]
    cos = r["token_cosine"]
    join = int(r.get("join", 1))
    pages = (
        f"{r['documents']:,} pages of {join} Vaswani abstracts joined"
        if join > 1
        else f"{r['documents']:,} Vaswani abstracts"
    )
    judged = (
        "nDCG is not measured on joined pages (the qrels judge abstracts)"
        if join > 1
        else f"nDCG@10 over the {r['queries_judged']} queries with a relevant document among them"
    )
    return (
        _provenance(r) + "\n\n" + _table(header, rows) + f"\n\n{pages} ({r['tokens']:,} tokens), "
        f"{r['torch_threads']} torch threads, batch {r['batch_size']}; int8 / float32 speed per "
        f"alternated chunk: {speed} (median {r['int8_speedup_median']:.2f}). {judged}. "
        "Token vectors' "
        f"cosine to float32: mean {cos['mean']:.3f}, 1st percentile {cos['p1']:.3f}, "
        f"min {cos['min']:.3f}."
    )


def table_residual_codec(r: dict[str, Any]) -> str:
    """Section 5d: every storage of ``experiments.residual_codec`` on each real set of the run, with
    fast-plaid: bytes every file counted (and as a fraction of float16 and of float16 --faiss
    Flat), recall@10 against exact float32 MaxSim, nDCG@10, and times (loaded machine: ratios
    only); runs that record it (``fde_dimension``) also show each index's first stage."""
    blocks = [_residual_codec_block(block) for block in r["sets"]]
    return f"{_provenance(r)}\n\n" + "\n\n".join(blocks)


def _residual_codec_block(block: dict[str, Any]) -> str:
    rows = [x for x in block["rows"] if "error" not in x]
    size = {x["dtype"]: x["bytes_per_doc_all_files"] for x in rows if x.get("pool_factor") == 1}
    first_stage = any("fde_dimension" in x for x in rows)
    out = []
    for x in rows:
        b = x["bytes_per_doc_all_files"]
        ndcg = x["ndcg@10"]
        codec = x.get("recall@10_codec_only")
        out.append(
            [
                x["dtype"],
                x.get("pool_factor", 1),
                f"{b / 1024:.2f}",
                f"{x['bytes_per_token_all_files']:.1f}",
                f"1/{size['float16'] / b:.1f}" if "float16" in size else "-",
                f"1/{size['float16-flat'] / b:.1f}" if "float16-flat" in size else "-",
                f"{x['recall@10_search']:.3f}",
                "-" if codec is None else f"{codec:.3f}",
                f"{ndcg:.4f}" if isinstance(ndcg, float) else "-",
                f"{x['encode_pages_per_s']:.0f}" if "encode_pages_per_s" in x else "-",
                f"{x['search_s_per_query'] * 1e3:.1f}" if "search_s_per_query" in x else "-",
            ]
            + (
                [
                    f"{x['faiss_factory']}, {x['fde_dimension']}-d FDE"
                    if "fde_dimension" in x
                    else "-"
                ]
                if first_stage
                else []
            )
        )
    header = [
        "storage",
        "pool",
        "KiB/doc (every file)",
        "B/token",
        "of float16",
        "of float16 Flat",
        "recall@10",
        "recall@10 codec only",
        "nDCG@10",
        "build docs/s",
        "search ms/query",
    ] + (["first stage"] if first_stage else [])
    failed = [f"{x['dtype']}: {x['error'][:300]}" for x in block["rows"] if "error" in x]
    note = f"\n\nNot run: {'; '.join(failed)}" if failed else ""
    return (
        f"{block['set']}: {block['documents']:,} documents, "
        f"{block['tokens']:,} tokens of {block['dim']} dimensions.\n\n{_table(header, out)}{note}"
    )


def table_residual_first_stage(r: dict[str, Any]) -> str:
    """Section 5d: FDE shapes and fast-scan codes for residual indexes (``R:k:p:m``), recall@10
    after rescoring C candidates with res2 / res4 (Vaswani) and the first stage's own recall@C
    (Vaswani and ColPali-shaped synthetic pages)."""
    out = []
    for block in r["sets"]:
        shown = ("128", "256", "512", "1024")
        depths = [k[3:] for k in block["rows"][0] if k.startswith("fs@") and k[3:] in shown]
        codecs = [c for c in ("res2", "res4") if f"{c}@{depths[0]}" in block["rows"][0]]
        header = ["R:k:p:m", "FDE dims", "code B/doc"] + [
            f"{what}@{c}" for c in depths for what in ("first stage", *codecs)
        ]
        rows = [
            [x["spec"], x["fde_dimension"], int(x["spec"].split(":")[3]) // 2]
            + [f"{x[f'{what}@{c}']:.3f}" for c in depths for what in ("fs", *codecs)]
            for x in block["rows"]
        ]
        out.append(f"{block['set']}: {block['documents']:,} documents.\n\n{_table(header, rows)}")
    return f"{_provenance(r)}\n\n" + "\n\n".join(out)


def table_residual_candidates(r: dict[str, Any]) -> str:
    """Section 5d: the same indexes searched with more first-stage candidates (one run)."""
    (block,) = r["sets"]
    rows = [
        [
            x["dtype"],
            c,
            f"{x['bytes_per_doc_all_files'] / 1024:.2f}",
            f"{y['recall@10_search']:.3f}",
            f"{y['ndcg@10']:.4f}" if isinstance(y["ndcg@10"], float) else "-",
            f"{y['search_s_per_query'] * 1e3:.0f}",
        ]
        for x in block["rows"]
        for c, y in x.get("by_candidates", {}).items()
    ]
    header = ["storage", "candidates", "KiB/doc", "recall@10", "nDCG@10", "search ms/query"]
    return f"{_provenance(r)}\n\n{_table(header, rows)}"


def table_residual_speed(r: dict[str, Any]) -> str:
    """Section 5d: residual searches with and without a refine depth against the float16
    default, alternated in one process (``experiments.residual_speed``)."""
    out = []
    for block in r["sets"]:
        rows = [
            [
                k,
                x["config"],
                f"{x['bytes_per_doc_all_files'] / 1024:.2f}",
                f"{x['search_s_per_query'] * 1e3:.2f}",
                f"{x['ratio_to_float16']:.2f}x",
                f"{x['recall@10']:.3f}",
                f"{x['ndcg@10']:.4f}" if isinstance(x["ndcg@10"], float) else "-",
            ]
            for k, xs in block["by_k"].items()
            for x in xs
        ]
        header = ["k", "search", "KiB/page", "ms/query", "vs float16", "recall@10", "nDCG@10"]
        out.append(f"{block['set']}: {block['documents']:,} pages.\n\n{_table(header, rows)}")
    return f"{_provenance(r)}\n\n" + "\n\n".join(out)


def table_kmeans_seeds(*runs: dict[str, Any]) -> str:
    """Section 5d: the default index with latemm's k-means and with faiss's, over seeds, one
    table per set (``experiments.kmeans_seeds``)."""
    out = []
    for r in runs:
        rows = [
            [x["seed"], x["kmeans"], f"{x['build_s']:.0f}", f"{x['recall@10']:.3f}"]
            + [f"{x['ndcg@10']:.4f}"]
            for x in r["runs"]
        ]
        rows += [
            ["mean", name, f"{m['build_s']:.0f}", f"{m['recall@10']:.3f}", f"{m['ndcg@10']:.4f}"]
            for name, m in r["means"].items()
        ]
        header = ["seed", "k-means", "build s", "recall@10", "nDCG@10"]
        out.append(f"{_provenance(r)} {r['set']}:\n\n{_table(header, rows)}")
    return "\n\n".join(out)


def table_codebook_draw(*runs: dict[str, Any]) -> str:
    """Section 5d: the default index's recall with its codebook trained on the first vectors
    added, on whole pages drawn at random, or on tokens drawn over every page
    (``experiments.codebook_draw``)."""
    out = []
    for r in runs:
        rows = [
            [
                block["set"],
                x["draw"],
                "-" if x["sample_vectors"] is None else f"{x['sample_vectors']:,}",
                f"{x['recall@10']:.3f}",
                f"{x['ndcg@10']:.4f}" if isinstance(x["ndcg@10"], float) else "-",
            ]
            for block in r["sets"]
            for x in block["rows"]
        ]
        header = ["set", "codebook trained on", "vectors drawn", "recall@10", "nDCG@10"]
        out.append(f"{_provenance(r)}\n\n{_table(header, rows)}")
    return "\n\n".join(out)


def table_scale_residual(*runs: dict[str, Any]) -> str:
    """Section 5d: the 100k ColPali-shaped latency runs on the default index (res4 searched by
    its centroids, ``experiments.bench_scale``): the build's run, then searches of the same
    index with other depths or first stages, per candidate count."""
    r = runs[0]
    disk, build, exact = r["disk"], r["build"], r["exact"]
    head = (
        f"{r['pages']:,} pages, {disk['bytes_per_page'] / 1024:.1f} KiB per page every file "
        f"counted ({disk['manifest_files_bytes'] / 2**30:.2f} GiB), built at "
        f"{build['pages_per_s_wall']:.1f} pages/s; brute force "
        f"{exact['brute_force_single_query_s']:.1f} s for one query (float32 in RAM)."
    )
    rows = [[x.get("first_stage", "-"), *_scale_row(x)] for run in runs for x in run["latemm"]]
    header = [
        "first stage",
        "depth",
        "C",
        "recall@10",
        "p50 ms",
        "p95 ms",
        "queries/s batched",
    ]
    provenance = "\n\n".join(_provenance(run) for run in runs)
    return f"{provenance}\n\n{head}\n\n{_table(header, rows)}"


def table_centroid_probe(r: dict[str, Any]) -> str:
    """Section 5d: recall@10 of the centroid first stage by probes and depth, beside the FDE's
    default candidates at the same depths (``experiments.centroid_probe``)."""
    rows = [
        [
            block["set"],
            x["first_stage"],
            "-" if x["probe"] is None else x["probe"],
            x["depth"],
            x["candidates"],
            f"{x['recall@10']:.3f}",
        ]
        for block in r["sets"]
        for x in block["rows"]
    ]
    header = ["set", "first stage", "probes", "depth", "candidates", "recall@10"]
    return f"{_provenance(r)}\n\n{_table(header, rows)}"


def table_residual_rotation(r: dict[str, Any]) -> str:
    """Section 5d: the residual's quantile buckets on its own axes, on principal axes, and on
    principal axes with bits spread by variance (the codec's own loss, no first stage)."""
    rows = [
        [
            x["coding"],
            x["bits_per_dim"],
            x["bits_per_token"],
            ", ".join(f"{n} x {b}" for b, n in (x["tiers"] or {}).items() if n) or "-",
            f"{x['recall@10_codec_only']:.3f}",
            f"{x['mse']:.4f}",
        ]
        for x in r["rows"]
    ]
    header = ["coding", "bits/dim", "bits/token", "axes x bits", "recall@10 codec only", "MSE"]
    return (
        f"{_provenance(r)}\n\nFirst {r['documents']:,} Vaswani abstracts, {r['tokens']:,} "
        f"tokens, {r['centroids']:,} centroids.\n\n{_table(header, rows)}"
    )


FRAGMENT_TABLES: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "cpu_encode": (("bench_cpu_encode",), table_cpu_encode),
    "cpu_encode.long": (("bench_cpu_encode_long",), table_cpu_encode),
    "codec_probe.codecs": (("codec_probe",), table_codecs),
    "codec_probe.shannon": (("codec_probe",), table_shannon),
    "fusion.latency": (
        (
            "bench_fusion_latency_before_1",
            "bench_fusion_latency_after_1",
            "bench_fusion_latency_before_2",
            "bench_fusion_latency_after_2",
        ),
        table_fusion_latency,
    ),
    "first_stage.segments": (("bench_first_stage_segments",), table_first_stage_segments),
    "first_stage.timing": (("bench_first_stage_segments",), table_first_stage_timing),
    "maxsim_threads1.kernel": (("bench_maxsim_threads1",), table_maxsim_kernel),
    "maxsim_threads1.rescore": (("bench_maxsim_threads1",), table_maxsim_rescore),
    "plan_10m": (("ab_main_1", "bench_scale_100000_pq1_refine_decode"), table_plan_10m),
    "refine.quality": (("refine_quality",), table_refine),
    "residual_codec.vaswani": (("residual_codec_vaswani_pool_plaid",), table_residual_codec),
    "residual_codec.colbert": (("residual_codec_colbert_pool_plaid",), table_residual_codec),
    "residual_rotation": (("residual_rotation_3000docs",), table_residual_rotation),
    # After the Lloyd-Max buckets (codecs.bucket_levels): one run per set with fast-plaid.
    "residual_codec.vaswani_lloyd": (("residual_codec_vaswani_plaid",), table_residual_codec),
    "residual_codec.colbert_lloyd": (("residual_codec_colbert_plaid",), table_residual_codec),
    "residual_codec.vaswani_speed": (("residual_codec_vaswani_x5",), table_residual_codec),
    "residual_codec.vaswani_nofast": (("residual_codec_vaswani_x7",), table_residual_codec),
    "residual_codec.pool": (("residual_codec_vaswani_poolonly",), table_residual_codec),
    # The residual dtypes' half FDE (k=4, PQ640x4fs): both sets and fast-plaid in one run.
    "residual_codec.half_fde": (("residual_codec_plaid",), table_residual_codec),
    "residual_codec.half_fde_pool": (("residual_codec_pool_plaid",), table_residual_codec),
    # The former residual first stage (k=5, PQ1280x4fs) with the index codebook: the A/B.
    "residual_codec.fde10240": (("residual_codec_vaswani_fde10240",), table_residual_codec),
    "residual_first_stage": (("residual_first_stage",), table_residual_first_stage),
    "residual_codec.mmlongbench": (("residual_codec_mmlongbench_plaid",), table_residual_codec),
    "residual_codec.candidates": (
        ("residual_codec_vaswani_candidates",),
        table_residual_candidates,
    ),
    "residual_speed": (("residual_speed",), table_residual_speed),
    "residual_codec.vaswani_all": (("residual_codec_vaswani_all",), table_residual_codec),
    "residual_speed.mmlongbench": (("residual_speed_mmlongbench",), table_residual_speed),
    # The centroid first stage (--first-stage centroids, PLAID's candidate generation).
    "centroid_probe": (("centroid_probe",), table_centroid_probe),
    "residual_speed.centroids": (("residual_speed_centroids",), table_residual_speed),
    "residual_speed.mmlongbench_centroids": (
        ("residual_speed_mmlongbench_centroids",),
        table_residual_speed,
    ),
    # The default index (res4 searched by its centroids) against the float16 ones.
    "residual_speed.default": (("residual_speed_default",), table_residual_speed),
    "residual_speed.mmlongbench_default": (
        ("residual_speed_mmlongbench_default",),
        table_residual_speed,
    ),
    "kmeans_seeds": (("kmeans_seeds", "kmeans_seeds_mmlongbench"), table_kmeans_seeds),
    "kmeans_iterations": (("kmeans_iterations",), table_kmeans_seeds),
    "codebook_draw": (
        ("codebook_draw_mmlongbench", "codebook_draw_vaswani"),
        table_codebook_draw,
    ),
    "scale.res4": (
        (
            "bench_scale_100000_res4",
            "bench_scale_100000_res4_depth",
            "bench_scale_100000_res4_fde",
        ),
        table_scale_residual,
    ),
    "refine.ab": (
        ("ab_refine_before_1", "ab_refine_after_1", "ab_refine_before_2", "ab_refine_after_2"),
        table_ab_refine,
    ),
    "refine.scale": (("bench_scale_100000_pq1_refine",), table_refine_scale),
    "segments.ab": (
        (
            "bench_segments_before_1",
            "bench_segments_after_1",
            "bench_segments_before_2",
            "bench_segments_after_2",
        ),
        table_segments,
    ),
    "segments.batch_ab": (
        ("ab_batch_before_1", "ab_batch_after_1", "ab_batch_before_2", "ab_batch_after_2"),
        table_ab_refine,
    ),
    "scale_100k_int8.in_place": (
        (
            "bench_scale_100000_int8_inplace_e541650",
            "bench_scale_100000_int8_inplace_cold",
            "bench_scale_100000_int8_inplace_warm",
            "bench_scale_100000_int8",
        ),
        table_int8_in_place,
    ),
}


def _sources() -> Sources:
    """What a section reads beyond its record, as this module is configured now."""
    return Sources(results=RESULTS, writeups=WRITEUPS, writeup=writeup)


def _rendered_by(module: str) -> Callable[[Any], str]:
    """The section ``experiments/<module>.py`` renders (its ``render_section``), imported when
    the report is rendered."""

    def render_section(record: Any) -> str:
        return str(
            importlib.import_module(f"experiments.{module}").render_section(record, _sources())
        )

    return render_section


# Experiment name -> its section's renderer (from its record). Each experiment module renders
# its own section; a section rendered here from its record also works (``section(record)``).
SECTIONS = {
    "mteb_vaswani": _rendered_by("mteb_vaswani"),
    "bench_fde": _rendered_by("bench_fde"),
    "bench_index": _rendered_by("bench_index"),
    "bench_search": _rendered_by("bench_search"),
    "eval_text": _rendered_by("eval_text"),
    "eval_fusion": _rendered_by("eval_fusion"),
    "eval_ocr": _rendered_by("eval_ocr"),
    "eval_tune": _rendered_by("eval_tune"),
    "storage_quality": _rendered_by("storage_quality"),
    "candidates": _rendered_by("candidates"),
    "bench_encoders": _rendered_by("bench_encoders"),
    "bench_ray": _rendered_by("bench_ray"),
    "bench_shapes": _rendered_by("bench_shapes"),
}
section_index = SECTIONS["bench_index"]  # section 2 alone (tests/test_report.py reads it)
section_scale = _rendered_by("bench_scale")  # from every bench_scale_<pages>.json

# The report's reading order. A name in SECTIONS (or "bench_scale", "findings") is rendered from
# the JSON and followed by writeups/<name>.md when that file exists; any other name is a
# hand-written section: writeups/<name>.md alone.
ORDER = [
    "bench_fde",
    "bench_index",
    "bench_search",
    "bench_scale",
    "3b_int8_float16_pass",
    "3b_int8_in_place",
    "3b_1m_pages",
    "3b_int8_spin",
    "3b_openmp",
    "eval_text",
    "eval_fusion",
    "4b_fusion_latency",
    "eval_ocr",
    "mteb_vaswani",
    "eval_tune",
    "storage_quality",
    "5b_codecs",
    "5b_codecs_limit",
    "5c_refine",
    "5d_residual_codec",
    "candidates",
    "6b_first_stage",
    "bench_encoders",
    "bench_ray",
    "7c_rescoring",
    "7c_int8_blocks",
    "7c_page_magnitudes",
    "7c_segments",
    "7c_cpu_encode",
    "bench_shapes",
    "findings",
    "8_gpu",
]


def findings(quick: bool) -> str:
    """The MUVERA paper's qualitative claims, checked against our own JSON."""
    lines = ["## Against the MUVERA paper's findings", ""]
    fde = _load("bench_fde", quick)
    if fde:
        for data in sorted({x["dataset"] for x in fde["recall"]}):
            rows = [
                x
                for x in fde["recall"]
                if x["dataset"] == data and x["R"] == 20 and x["projection"] == 16
            ]
            rows.sort(key=lambda x: x["fde_dimension"])
            recalls = [x["recall@10"] for x in rows]
            trend = "rises" if recalls[-1] > recalls[0] else "does not rise"
            lines.append(
                f"- *FDE quality grows with dimension*: on {data}, FDE-only recall@10 {trend} from "
                f"{recalls[0]:.2f} to {recalls[-1]:.2f} as k goes 3 -> 6 at R=20 (dimension "
                f"{rows[0]['fde_dimension']:,} -> {rows[-1]['fde_dimension']:,}). "
                + (
                    "Not reproduced on this set (small: a few dozen documents and queries)."
                    if recalls[-1] <= recalls[0]
                    else "Reproduced."
                    if recalls == sorted(recalls)
                    else "Reproduced, not at every step."
                )
            )
        lines.append(
            "- *FDE alone is not enough; FDE + exact rescoring of a few hundred candidates recovers "
            "the exact top-10*: FDE-only recall@10 stays below 0.8 here, while rescoring 256-512 "
            "candidates gives 0.97-1.00 (section 3). Reproduced."
        )
    search = _load("bench_search", quick)
    if search and search.get("colpali"):
        big = search["colpali"][-1]
        best = next((x for x in big["latemm"] if x["recall@10"] >= 0.98), None)
        if best:
            lines.append(
                f"- *Large latency gains over exhaustive late interaction at equal recall*: at "
                f"{big['documents']:,} pages, recall@10 {best['recall@10']:.2f} at "
                f"{best['speedup_vs_brute_force']:.0f}x the speed of brute-force MaxSim. Reproduced."
            )
    lines += plaid_findings(_load("bench_search_plaid", False))
    lines += candidate_findings(_load("candidates", quick))
    return "\n".join(lines)


def plaid_findings(record: dict[str, Any] | None) -> list[str]:
    """Against PLAID: latemm's cheapest setting with at least fast-plaid's best recall."""
    if not record:
        return ["- *Higher recall than PLAID at lower latency*: fast-plaid has not run yet."]
    sizes = list(record.get("colpali", []))
    if record.get("vaswani"):
        sizes.append({**record["vaswani"], "documents": "Vaswani"})
    lines = []
    for size in sizes:
        runs = (size.get("fast_plaid") or {}).get("runs", [])
        if not runs:
            continue
        plaid = max(runs, key=lambda r: (r["recall@10"], r["batch_queries_per_s"]))
        ours = next((x for x in size["latemm"] if x["recall@10"] >= plaid["recall@10"]), None)
        where = f"{size['documents']:,} pages" if isinstance(size["documents"], int) else "Vaswani"
        if ours is None:
            lines.append(
                f"- *Higher recall than PLAID at lower latency*: on {where} no latemm setting "
                f"reached fast-plaid's recall@10 {plaid['recall@10']:.3f}. Contradicted."
            )
            continue
        qps = ours["batch_queries_per_s"] / plaid["batch_queries_per_s"]
        lat = plaid["latency_s_median"] / ours["latency_s_median"]
        lines.append(
            f"- *Higher recall than PLAID at lower latency*: on {where}, fast-plaid's best recall@10 "
            f"is {plaid['recall@10']:.3f} ({plaid['batch_queries_per_s']:.1f} queries/s, "
            f"{plaid['latency_s_median'] * 1e3:.0f} ms); latemm with C={ours['candidates']} gets "
            f"{ours['recall@10']:.3f} at {qps:.1f}x the queries/s and {lat:.1f}x lower latency. "
            + ("Reproduced." if qps > 1 and lat > 1 else "Not reproduced on speed.")
        )
    return lines


def _needed_range(method: dict[str, Any], target: str) -> tuple[float, float] | None:
    """(lower, upper) bound of the candidates a method needs for ``target`` recall: exact for the
    FDE rows, between two measured k' for the per-token row; None if never reached."""
    need = method["candidates_needed"][target]
    if need is None:
        return None
    below = [p["candidates"] for p in method.get("curve", []) if p["candidates"] < need]
    return (below[-1] if below else need, need)


def candidate_findings(record: dict[str, Any] | None) -> list[str]:
    """The paper: FDEs need several times fewer candidates than per-token retrieval."""
    if not record:
        return ["- *Fewer candidates than a per-token first stage*: not measured yet."]
    lines = []
    for data in record["datasets"]:
        methods = {m["method"]: m for m in data["methods"]}
        parts, verdicts = [], []
        for target in ("90%", "95%"):
            fde = _needed_range(methods["FDE float32"], target)
            token = _needed_range(methods["per token (PLAID-style)"], target)
            if fde is None or token is None:
                parts.append(f"{target}: FDE {fde and fde[1]}, per token {token and token[1]}")
                verdicts.append("worse" if fde is None else "better")
                continue
            parts.append(f"{target}: FDE {fde[1]:,.0f}, per token {token[0]:,.0f}-{token[1]:,.0f}")
            verdicts.append(
                "better" if fde[1] < token[0] else "worse" if fde[1] > token[1] else "tie"
            )
        verdict = (
            "Reproduced."
            if set(verdicts) == {"better"}
            else "Contradicted: the per-token first stage needs fewer."
            if set(verdicts) == {"worse"}
            else "Mixed."
        )
        lines.append(
            f"- *FDEs need fewer candidates than a per-token (single-vector) first stage*: on "
            f"{data['data']}, candidates holding the exact top-10 at {'; '.join(parts)}. {verdict}"
        )
    return lines


def _scale_records() -> list[dict[str, Any]]:
    """One default-config run per size (``bench_scale_<pages>.json``), smallest first; named
    variants (other dtypes, re-measured searches on a kept index) are written up by hand."""
    return sorted(
        (
            json.loads(p.read_text(encoding="utf-8"))
            for p in RESULTS.glob("bench_scale_*.json")
            if p.stem.removeprefix("bench_scale_").isdigit()
        ),
        key=lambda r: r["pages"],
    )


def _block(name: str, quick: bool) -> list[str]:
    """One entry of ORDER: a generated section and its ``writeups/<name>.md`` if any, or a
    hand-written section (``writeups/<name>.md``, which must exist)."""
    if name == "findings":
        generated = findings(quick)
    elif name == "bench_scale":  # run on its own (hours at 1M pages): left out until it has
        records = _scale_records()
        if not records:
            return []
        generated = section_scale(records)
    elif name in SECTIONS:
        record = _load(name, quick)
        generated = (
            SECTIONS[name](record)
            if record
            else f"## {name}\n\n*Not run yet: `python -m experiments.{name}`.*"
        )
    else:
        return [writeup(name)]
    return [generated.rstrip("\n"), *filter(None, [_optional_writeup(name)])]


def render(quick: bool = False) -> str:
    """RESULTS.md: the title, then every entry of ORDER, blocks one blank line apart."""
    blocks = [
        "# latemm: results",
        "Generated by `python -m experiments.report` from the JSON in `experiments/results/` and "
        "the hand-written notes in `experiments/writeups/` (edit those and re-render; never this "
        "file). Ratios are measured in the same run; absolute times on a shared 2-core machine "
        "are noise.",
    ]
    for name in ORDER:
        blocks += _block(name, quick)
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Regenerate experiments/RESULTS.md from experiments/results/*.json (tables) "
        "and experiments/writeups/*.md (hand-written text, included verbatim; ORDER in "
        "experiments/report.py sets where). To add or change a note, edit its fragment in "
        "experiments/writeups/, then run this command; never edit RESULTS.md by hand.",
    )
    parser.add_argument("--run", action="store_true", help="run the experiments first")
    parser.add_argument("--quick", action="store_true", help="quick sizes")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "RESULTS.md"),
        help="where to write the report (default: experiments/RESULTS.md)",
    )
    args = parser.parse_args(argv)
    if args.run:
        for name in EXPERIMENTS:
            module = importlib.import_module(f"experiments.{name}")
            module.main(["--quick"] if args.quick else [])
    Path(args.out).write_text(render(args.quick), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
