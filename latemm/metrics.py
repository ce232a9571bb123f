"""Evaluation of run files against qrels, with ranx (no hand-written metrics).

Runs: the Parquet run files ``latemm search`` writes, or TREC run files. Qrels: TREC qrels
(``qid 0 docid rel``), JSON ``{query: {doc: rel}}``, or Parquet (``query_id``, ``doc_id``,
``relevance``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from index_store.errors import InputError, require

DEFAULT_METRICS = ["ndcg@5", "ndcg@10", "recall@10", "recall@100", "mrr@10"]


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    source = Path(path)
    if not source.is_file():
        raise InputError(f"qrels file {source} does not exist")
    out: dict[str, dict[str, int]] = {}
    if source.suffix == ".json":
        payload = json.loads(source.read_text(encoding="utf-8"))
        return {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in payload.items()}
    if source.suffix == ".parquet":
        table = pq.read_table(source)
        for column in ("query_id", "doc_id", "relevance"):
            if column not in table.column_names:
                raise InputError(
                    f"{source}: qrels Parquet needs a {column!r} column (has {table.column_names})"
                )
        for q, d, r in zip(
            *(table.column(c).to_pylist() for c in ("query_id", "doc_id", "relevance")), strict=True
        ):
            out.setdefault(str(q), {})[str(d)] = int(r)
        return out
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise InputError(
                f"{source}, line {number}: expected 'qid 0 docid relevance', got {line!r}"
            )
        out.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return out


def load_run(path: str | Path) -> dict[str, dict[str, float]]:
    source = Path(path)
    if not source.is_file():
        raise InputError(f"run file {source} does not exist")
    out: dict[str, dict[str, float]] = {}
    if source.suffix == ".parquet":
        table = pq.read_table(source, columns=["query_id", "doc_id", "score"])
        for q, d, s in zip(
            *(table.column(c).to_pylist() for c in ("query_id", "doc_id", "score")), strict=True
        ):
            out.setdefault(str(q), {})[str(d)] = float(s)
        return out
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise InputError(
                f"{source}, line {number}: expected 'qid Q0 docid rank score [tag]', got {line!r}"
            )
        out.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    return out


def _ranx_objects(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], name: str
) -> tuple[Any, Any]:
    ranx = require("ranx", "eval")
    judged = {q: docs for q, docs in qrels.items() if any(r > 0 for r in docs.values())}
    # Queries the run never answered score zero rather than being left out.
    filled = {q: run.get(q) or {"__latemm_no_result__": 0.0} for q in judged}
    return ranx.Qrels.from_dict(judged), ranx.Run.from_dict(filled, name=name)


def evaluate(
    run: dict[str, dict[str, float]],
    qrels: dict[str, dict[str, int]],
    metrics: list[str] | None = None,
) -> dict[str, float]:
    """Mean of each metric over the queries with at least one relevant document."""
    ranx = require("ranx", "eval")
    ranx_qrels, ranx_run = _ranx_objects(run, qrels, "run")
    scores = ranx.evaluate(ranx_qrels, ranx_run, metrics or DEFAULT_METRICS, make_comparable=True)
    if isinstance(scores, float):
        return {(metrics or DEFAULT_METRICS)[0]: scores}
    return {k: float(v) for k, v in scores.items()}


def compare(
    runs: dict[str, dict[str, dict[str, float]]],
    qrels: dict[str, dict[str, int]],
    metrics: list[str] | None = None,
) -> Any:
    """Side-by-side table with a paired two-sided t-test between runs (ranx's report)."""
    ranx = require("ranx", "eval")
    objects = [_ranx_objects(run, qrels, name) for name, run in runs.items()]
    return ranx.compare(
        objects[0][0],
        runs=[o[1] for o in objects],
        metrics=metrics or DEFAULT_METRICS,
        stat_test="student",
        make_comparable=True,
    )
