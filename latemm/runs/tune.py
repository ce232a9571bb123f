"""Fitting a multi-field index's fusion to labelled queries by k-fold cross-validation
(``latemm tune``).

Each field's first phase (its top ``C``) and every field's exact second-phase scores over the
union of those lists are computed once per query (``collect``). A setting (fields, fusion, RRF
k, weights) is then ranked by re-fusing those cached scores with ``FieldRetriever``'s own
fusion steps, no search repeated: the same top k a real search with the setting gives (tested).
Per fold, the setting with the best mean metric on the other folds' queries ranks the fold's
own queries; the held-out scores make the cross-validated estimate, compared by ranx's paired
t-test with the default (``auto``) and with each field alone. The setting chosen on all the
queries can be recorded as the index's search default (``latemm.index.fields.SearchDefaults``).

Imports ``latemm.retrieval.field_search``, ``latemm.index.fields``, ``latemm.ranking.fusion``,
``latemm.runs.metrics``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from index_store.errors import InputError
from latemm.index.fields import SearchDefaults, write_search_defaults
from latemm.ranking import fusion as fusion_lib
from latemm.retrieval.field_search import FieldRetriever, Hits, plan, union
from latemm.retrieval.retriever import check_request

FOLDS = 5
METRIC = "ndcg@10"
RRF_KS = (5, 10, 20, 60)
# Weights of the weighted (min-max) settings: every split of this many parts over the fields,
# each field at least one part (2 fields: 0.1 .. 0.9).
SIMPLEX_PARTS = {2: 10, 3: 5}
DEFAULT_PARTS = 4
BATCH = 64


@dataclass(frozen=True)
class Setting:
    """One candidate fusion: the fields searched, the fusion, its RRF k (rrf, auto) and the
    fields' weights (weighted; aligned with ``fields``). One field alone is ``auto`` over it."""

    fields: tuple[str, ...]
    fusion: str
    rrf_k: int | None = None
    weights: tuple[float, ...] | None = None

    @property
    def label(self) -> str:
        if len(self.fields) == 1:
            return f"{self.fields[0]} alone"
        if self.fusion == "weighted":
            pairs = zip(self.fields, self.weights or (), strict=True)
            return "weighted " + ",".join(f"{n}={w:g}" for n, w in pairs)
        return f"{self.fusion} k={self.rrf_k}"

    def options(self) -> dict[str, Any]:
        """``FieldRetriever`` / ``latemm.search`` keyword arguments that search with it."""
        weights = None
        if self.weights is not None:
            weights = dict(zip(self.fields, self.weights, strict=True))
        return {
            "fields": list(self.fields),
            "fusion": self.fusion,
            "rrf_k": None if self.fusion == "weighted" else self.rrf_k,
            "weights": weights,
        }

    def defaults(self, tuned: Mapping[str, Any]) -> SearchDefaults:
        """The record ``fields.json`` keeps for it."""
        options = self.options()
        return SearchDefaults(
            tuple(self.fields), self.fusion, options["weights"], options["rrf_k"], "minmax", tuned
        )


def settings(names: Sequence[str], *, rrf_ks: Sequence[int] = RRF_KS) -> list[Setting]:
    """The search space over fields ``names``: the default (``auto``, k = 10) first, ``auto``
    and ``rrf`` at each k of ``rrf_ks``, min-max weighted fusion at each point of a coarse
    simplex grid (every weight positive), and each field alone."""
    names = tuple(names)
    out = [Setting(names, "auto", fusion_lib.AUTO_RRF_K)]
    out += [Setting(names, "auto", k) for k in rrf_ks if k != fusion_lib.AUTO_RRF_K]
    out += [Setting(names, "rrf", k) for k in rrf_ks]
    parts = SIMPLEX_PARTS.get(len(names), DEFAULT_PARTS)
    for split in product(range(1, parts), repeat=len(names)):
        if sum(split) == parts:
            out.append(Setting(names, "weighted", None, tuple(round(p / parts, 4) for p in split)))
    out += [Setting((n,), "auto", fusion_lib.AUTO_RRF_K) for n in names]
    return out


@dataclass
class ScoreCache:
    """Per batch of queries: each field's first phase (``Hits``, top ``C``) and its exact
    second-phase scores, (Q, U), of the union ``pool`` of every field's list."""

    retriever: FieldRetriever
    candidates: int
    query_ids: list[str]
    batches: list[tuple[list[int], dict[str, Hits], np.ndarray, dict[str, np.ndarray]]] = field(
        default_factory=list
    )

    def ranking(self, setting: Setting, k: int) -> np.ndarray:
        """(Q, k) doc ids (None pads), best first: what a search with ``setting`` returns,
        fused from the cached scores by ``FieldRetriever``'s own steps."""
        retriever = self.retriever
        saved = retriever.plan
        retriever.plan = plan(retriever.manifest, **setting.options())
        try:
            out = np.full((len(self.query_ids), k), None, dtype=object)
            for rows, hits, pool, exact in self.batches:
                mine = {n: hits[n] for n in retriever.plan.fields}
                first_weights, weights = retriever._weights(mine)
                cands, first = retriever._candidates(mine, self.candidates, first_weights)
                scores = {n: _at(cands, pool, exact[n]) for n in retriever.plan.scored}
                result = retriever._result(
                    [self.query_ids[i] for i in rows], cands, first, scores, k, weights
                )
                out[rows, : result.doc_ids.shape[1]] = result.doc_ids
            return out
        finally:
            retriever.plan = saved


def _at(cands: np.ndarray, pool: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(Q, C) ``values`` (Q, U) of ``pool``'s doc ids at the candidates ``cands``' columns."""
    out = np.full(cands.shape, np.nan)
    for q in range(cands.shape[0]):
        column = {d: u for u, d in enumerate(pool[q]) if d is not None}
        for c, d in enumerate(cands[q]):
            if d is not None:
                out[q, c] = values[q, column[d]]
    return out


def collect(
    index_dir: str | Path,
    texts: Sequence[str],
    query_ids: Sequence[str],
    *,
    fields: Sequence[str] | None = None,
    candidates: int | None = None,
    depth: int = 10,
    encoders: dict[str, Any] | None = None,
    device: str | None = None,
) -> ScoreCache:
    """Each field's first phase and exact scores for the queries, once (``ScoreCache``), for
    rankings ``depth`` deep (a search's first phase takes at least that many candidates)."""
    retriever = FieldRetriever(
        index_dir, fields=fields, fusion="auto", encoders=encoders, device=device
    )
    if len(retriever.plan.fields) < 2:
        raise InputError(
            f"{index_dir} has one field to search ({', '.join(retriever.plan.fields)}); tuning "
            "fuses two or more: add a field (`latemm index CORPUS --index DIR --field "
            "NAME=ENCODER`) or name them with --fields"
        )
    n_cand = check_request(depth, candidates)
    cache = ScoreCache(retriever, n_cand, list(query_ids))
    allowed = retriever._allowed(None)
    for start in range(0, len(texts), BATCH):
        rows = list(range(start, min(start + BATCH, len(texts))))
        encoded = retriever._encode([texts[i] for i in rows], {})
        hits = {
            n: retriever._first_phase(n, encoded[n], n_cand, allowed[n])
            for n in retriever.plan.fields
        }
        pool = union([h.doc_ids for h in hits.values()])
        exact = {
            n: retriever._second_phase(n, encoded[n], pool, hits[n]) for n in retriever.plan.fields
        }
        cache.batches.append((rows, hits, pool, exact))
    return cache


def per_query(
    rankings: Mapping[str, np.ndarray],
    query_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    metric: str,
) -> np.ndarray:
    """(S, Q) ranx's ``metric`` of each ranking ((Q, k) doc ids, best first) per query; every
    query needs a relevant document in ``qrels``."""
    from index_store.errors import require
    from latemm.runs.metrics import check_metrics

    ranx = require("ranx", "eval")
    check_metrics([metric])
    codes: dict[str, str] = {}  # short integer ids: ranx's numba code is slow on long ones

    def code(key: str) -> str:
        return codes.setdefault(key, str(len(codes)))

    judged = {code(q): {code(d): r for d, r in qrels[q].items()} for q in query_ids}
    ranx_qrels = ranx.Qrels.from_dict(judged)
    out = np.zeros((len(rankings), len(query_ids)))
    for s, ids in enumerate(rankings.values()):
        run = {
            code(q): {code(d): v for d, v in _rank_scores(row).items()} or {"\x00none": 0.0}
            for q, row in zip(query_ids, ids, strict=True)
        }
        ranx_run = ranx.Run.from_dict(run)
        ranx.evaluate(ranx_qrels, ranx_run, [metric], make_comparable=True)
        scores = dict(ranx_run.scores[metric])
        out[s] = [scores[codes[q]] for q in query_ids]
    return out


def _rank_scores(row: np.ndarray) -> dict[str, float]:
    """A ranking as run scores that keep its order exactly (ranx sorts by score)."""
    docs = [d for d in row if d is not None]
    return {d: float(len(docs) - i) for i, d in enumerate(docs)}


@dataclass(frozen=True)
class Fold:
    """One fold: the queries whose judgements chose the setting (``train``), those it was
    scored on (``test``), the setting and both means."""

    index: int
    train: tuple[str, ...]
    test: tuple[str, ...]
    chosen: str
    train_mean: float
    test_mean: float


def folds_of(query_ids: Sequence[str], n_folds: int, seed: int) -> list[list[int]]:
    """``n_folds`` disjoint folds of query positions, shuffled with ``seed``."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise InputError(f"--folds must be an integer >= 2, got {n_folds!r}")
    if n_folds > len(query_ids):
        raise InputError(
            f"--folds {n_folds} is more than the {len(query_ids)} judged queries; give at most "
            f"{len(query_ids)} folds (or more judged queries)"
        )
    order = np.random.default_rng(seed).permutation(len(query_ids))
    return [sorted(int(i) for i in part) for part in np.array_split(order, n_folds)]


def best(scores: np.ndarray) -> int:
    """The setting (row of (S, Q') ``scores``) with the best mean; ties: the earliest (the
    default first)."""
    means = scores.mean(axis=1)
    return int(np.flatnonzero(means >= means.max() - 1e-12)[0])


def cross_validate(
    scores: np.ndarray, labels: Sequence[str], query_ids: Sequence[str], n_folds: int, seed: int
) -> tuple[list[Fold], np.ndarray]:
    """Per fold, the setting ``best`` picks from the other folds' columns of (S, Q) ``scores``
    alone; returns the folds and the (Q,) index of the setting each query was scored with."""
    chosen_for = np.full(len(query_ids), -1)
    out = []
    for i, test in enumerate(folds_of(query_ids, n_folds, seed)):
        train = sorted(set(range(len(query_ids))) - set(test))
        choice = best(scores[:, train])
        chosen_for[test] = choice
        out.append(
            Fold(
                i,
                tuple(query_ids[j] for j in train),
                tuple(query_ids[j] for j in test),
                labels[choice],
                float(scores[choice, train].mean()),
                float(scores[choice, test].mean()),
            )
        )
    return out, chosen_for


@dataclass(frozen=True)
class TuneReport:
    """What ``tune`` found: the cross-validated estimate of the tuned fusion against the
    default and each field alone (means of held-out per-query ``metric``), ranx's paired
    t-test p-values of the tuned run against each, the folds, the setting chosen on every
    query (and whether it was saved)."""

    metric: str
    queries: int
    folds: list[Fold]
    estimates: dict[str, float]
    p_values: dict[str, float]
    chosen: Setting
    chosen_mean: float
    settings: dict[str, float]  # every setting's mean over all queries (not cross-validated)
    saved: bool = False
    unjudged: int = 0  # queries of the file without a relevant document: left out

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "queries": self.queries,
            "unjudged_queries_left_out": self.unjudged,
            "estimates": self.estimates,
            "p_values_tuned_vs": self.p_values,
            "chosen": {"label": self.chosen.label, **self.chosen.options()},
            "chosen_mean_all_queries": self.chosen_mean,
            "folds": [
                {
                    "fold": f.index,
                    "train_queries": len(f.train),
                    "test_queries": len(f.test),
                    "chosen": f.chosen,
                    "train_mean": f.train_mean,
                    "test_mean": f.test_mean,
                }
                for f in self.folds
            ],
            "settings": self.settings,
            "saved": self.saved,
        }

    def lines(self) -> list[str]:
        """A plain-text summary, one fact a line."""
        n = len(self.folds)
        left = f" ({self.unjudged} without a relevant document left out)" if self.unjudged else ""
        out = [f"{self.queries} judged queries{left}, {n}-fold cross-validation on {self.metric}:"]
        for label, value in self.estimates.items():
            p = self.p_values.get(label)
            tail = "" if p is None else f"   tuned vs this: p = {p:.4f}"
            out.append(f"  {label:<28} {value:.4f}{tail}")
        for f in self.folds:
            out.append(
                f"  fold {f.index}: {f.chosen} (train {f.train_mean:.4f}, held out "
                f"{f.test_mean:.4f}, {len(f.test)} queries)"
            )
        out.append(
            f"chosen on all queries: {self.chosen.label} ({self.metric} {self.chosen_mean:.4f})"
            + ("; saved as the index's search default" if self.saved else "; --save records it")
        )
        return out


def metric_depth(metric: str) -> int:
    """How deep a ranking ``metric`` reads (its ``@k``; 100 for a metric without one)."""
    found = re.search(r"@(\d+)$", metric)
    return int(found.group(1)) if found else 100


def read_queries(path: str | Path) -> tuple[list[str], list[str]]:
    """(query ids, texts) of a queries Parquet file (``query_id``, ``text``)."""
    from latemm.data.io import Columns, check_ids, open_dataset

    source = Path(path)
    if not source.exists():
        raise InputError(
            f"queries file {source} does not exist: give a Parquet file of query_id, text"
        )
    check_ids(source, columns=Columns(id="query_id"), kind="queries")
    dataset = open_dataset(source)
    if "text" not in dataset.schema.names:
        raise InputError(
            f"{source}: no 'text' column (columns: {', '.join(dataset.schema.names)}); tuning "
            "needs text queries (latemm convert QUESTIONS --out queries.parquet writes them)"
        )
    table = dataset.to_table(columns=["query_id", "text"])
    ids = [str(q) for q in table.column("query_id").to_pylist()]
    texts = table.column("text").to_pylist()
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{source}, row {row} (query {ids[row]!r}): empty or null text")
    return ids, texts


# Over 60 lines on purpose: the verb's whole job (check, collect, cross-validate, test, save)
# in the order a reader checks it.
def tune(
    index_dir: str | Path,
    queries: str | Path,
    qrels: str | Path | Mapping[str, Mapping[str, int]],
    *,
    folds: int = FOLDS,
    metric: str = METRIC,
    seed: int = 0,
    fields: Sequence[str] | None = None,
    candidates: int | None = None,
    save: bool = False,
    encoders: dict[str, Any] | None = None,
    device: str | None = None,
) -> TuneReport:
    """Fit ``index_dir``'s fusion on labelled queries by ``folds``-fold cross-validation.

    ``queries``: a Parquet file of ``query_id, text``; ``qrels``: a qrels file (TREC, JSON,
    Parquet) or ``{query_id: {doc_id: grade}}``. Only queries with a relevant document in the
    qrels count. ``fields``: the fields to fuse (default all). ``candidates``: the first
    phase's depth, as ``latemm search --candidates``. ``save``: record the setting chosen on
    every query as the index's search default (``fields.json``), which a search naming no
    fusion option then uses."""
    from latemm.runs.metrics import check_metrics, compare, load_qrels

    check_metrics([metric])
    query_ids, texts = read_queries(queries)
    judgements = load_qrels(qrels) if not isinstance(qrels, Mapping) else qrels
    judged = {q: d for q, d in judgements.items() if any(r > 0 for r in d.values())}
    keep = [i for i, q in enumerate(query_ids) if q in judged]
    if not keep:
        raise InputError(
            f"no query_id of {queries} has a relevant document in the qrels (queries: "
            f"{', '.join(query_ids[:3]) or 'none'}; qrels: {', '.join(list(judged)[:3]) or 'none'}); "
            "are they for the same queries?"
        )
    unjudged = len(query_ids) - len(keep)
    query_ids, texts = [query_ids[i] for i in keep], [texts[i] for i in keep]
    folds_of(query_ids, folds, seed)  # refused before any search
    k = metric_depth(metric)
    cache = collect(
        index_dir, texts, query_ids, fields=fields, candidates=candidates, depth=k,
        encoders=encoders, device=device,
    )  # fmt: skip
    space = settings(cache.retriever.plan.fields)
    rankings = {s.label: cache.ranking(s, k) for s in space}
    scores = per_query(rankings, query_ids, judged, metric)  # (S, Q)
    labels = list(rankings)
    fold_list, chosen_for = cross_validate(scores, labels, query_ids, folds, seed)
    tuned = np.array([rankings[labels[c]][q] for q, c in enumerate(chosen_for)], dtype=object)
    default = space[0].label
    singles = [s.label for s in space if len(s.fields) == 1]
    runs = {"tuned (cross-validated)": tuned, f"default ({default})": rankings[default]}
    runs.update({label: rankings[label] for label in singles})
    as_runs = {
        name: {q: _rank_scores(row) for q, row in zip(query_ids, ids, strict=True)}
        for name, ids in runs.items()
    }
    table = compare(as_runs, {q: dict(judged[q]) for q in query_ids}, [metric]).to_dict()
    estimates = {name: float(table[name]["scores"][metric]) for name in runs}
    tuned_row = table["tuned (cross-validated)"]["comparisons"]
    p_values = {name: float(tuned_row[name][metric]) for name in runs if name in tuned_row}
    choice = best(scores)
    chosen = space[choice]
    report = TuneReport(
        metric,
        len(query_ids),
        fold_list,
        estimates,
        p_values,
        chosen,
        float(scores[choice].mean()),
        {label: float(m) for label, m in zip(labels, scores.mean(axis=1), strict=True)},
        unjudged=unjudged,
    )
    if save:
        record = {
            "metric": metric,
            "folds": folds,
            "seed": seed,
            "queries": len(query_ids),
            "cv_estimate": estimates["tuned (cross-validated)"],
            "mean_all_queries": report.chosen_mean,
        }
        write_search_defaults(index_dir, chosen.defaults(record))
        report = TuneReport(**{**report.__dict__, "saved": True})
    return report
