"""Fusing several rankings of the same candidates into one. Arrays in, arrays out; numpy only.

Every function takes per-field score matrices, each (Q, U) float with NaN where a candidate has
no score in that field (absent from it, or not retrieved by it), and the (Q, U) object matrix of
the candidates' doc ids (None pads). Ranks break ties by doc_id, as every ranking here does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from index_store.errors import InputError

FUSIONS = ("rrf", "weighted", "auto")
# One scored field needs no fusion: its own scores are the ranking (what a plain index gives).
IDENTITY = "identity"
RRF_K = 60
RRF_K_MAX = 10**9
# Weights whose largest lies outside this range are divided by it (the ranking depends only on
# their ratios): weights of 1e39 or 1e-300 would otherwise give scores of inf or 0 in float32.
WEIGHT_RANGE = (1e-6, 1e6)
# ``auto``: reciprocal rank fusion with this k (top ranks count more than under k = 60), each
# field weighted per query by how far its top AGREEMENT_DEPTH agrees with the other fields'.
AUTO_RRF_K = 10
AGREEMENT_DEPTH = 10


def ranks(scores: np.ndarray, doc_ids: np.ndarray) -> np.ndarray:
    """(Q, U) float 1-based rank of each scored candidate within its row (best = 1, ties by
    doc_id); NaN where the score is NaN or the doc_id is None."""
    out = np.full(scores.shape, np.nan)
    for q in range(scores.shape[0]):
        cols = np.flatnonzero(~np.isnan(scores[q]) & (doc_ids[q] != None))  # noqa: E711
        order = cols[np.lexsort((doc_ids[q, cols].astype(str), -scores[q, cols]))]
        out[q, order] = np.arange(1, order.size + 1)
    return out


def _column(weight: Any) -> Any:
    """A field's weight as a number, or its (Q,) per-query weights as a (Q, 1) column."""
    return np.asarray(weight, dtype=np.float64).reshape(-1, 1) if np.ndim(weight) else weight


def rrf(
    field_scores: Sequence[np.ndarray],
    doc_ids: np.ndarray,
    weights: Sequence[Any],
    *,
    k: int = RRF_K,
) -> np.ndarray:
    """Weighted reciprocal rank fusion: ``sum_f w_f / (k + rank_f(d))`` over the fields that
    score d; NaN for padding. A weight is a number or one per query, (Q,)."""
    fused = np.zeros(doc_ids.shape)
    for scores, weight in zip(field_scores, weights, strict=True):
        fused += np.nan_to_num(_column(weight) / (k + ranks(scores, doc_ids)), nan=0.0)
    return np.where(doc_ids != None, fused, np.nan)  # noqa: E711


def agreement_weights(
    hit_lists: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    depth: int = AGREEMENT_DEPTH,
) -> list[np.ndarray]:
    """Per field, (Q,) weights for ``auto`` fusion: ``w_f * (a_f + 1) / (depth + 1)``, where
    ``a_f`` counts the pages of field f's top ``depth`` (``hit_lists[f]``, (Q, C) doc ids best
    first, None pads) that some other field's top ``depth`` holds too. A field that agrees with
    no other weighs ``1 / (depth + 1)`` of one that agrees fully; one field alone, or fields
    that agree equally, keep their weights' ratio (so two fields fuse as plain RRF)."""
    tops = [[{d for d in row[:depth] if d is not None} for row in hits] for hits in hit_lists]
    out = []
    for f, weight in enumerate(weights):
        agree = np.array(
            [
                len(mine & set().union(*(tops[g][q] for g in range(len(tops)) if g != f)))
                if len(tops) > 1
                else depth
                for q, mine in enumerate(tops[f])
            ],
            dtype=np.float64,
        )
        out.append(weight * (agree + 1.0) / (depth + 1.0))
    return out


def min_max(scores: np.ndarray) -> np.ndarray:
    """Each row's scores mapped to [0, 1] by its min and max (1 where they are equal); NaN
    stays NaN."""
    with np.errstate(all="ignore"):
        low = np.nanmin(np.where(np.isnan(scores), np.inf, scores), axis=1, keepdims=True)
        high = np.nanmax(np.where(np.isnan(scores), -np.inf, scores), axis=1, keepdims=True)
        span = high - low
        out = np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 1.0)
    return np.where(np.isnan(scores), np.nan, out)


def z_score(scores: np.ndarray) -> np.ndarray:
    """Each row's scores minus their mean, over their standard deviation (0 where it is 0);
    NaN stays NaN."""
    valid = ~np.isnan(scores)
    count = valid.sum(axis=1, keepdims=True)
    filled = np.where(valid, scores, 0.0)
    with np.errstate(all="ignore"):
        mean = filled.sum(axis=1, keepdims=True) / np.maximum(count, 1)
        spread = np.sqrt(
            np.where(valid, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True)
            / np.maximum(count, 1)
        )
        out = np.where(spread > 0, (scores - mean) / np.where(spread > 0, spread, 1.0), 0.0)
    return np.where(valid, out, np.nan)


NORMALIZATIONS = {"minmax": min_max, "zscore": z_score}


def weighted(
    field_scores: Sequence[np.ndarray],
    doc_ids: np.ndarray,
    weights: Sequence[Any],
    *,
    normalization: str = "minmax",
) -> np.ndarray:
    """``sum_f w_f * norm_f(d)``: a convex combination of each field's scores normalised per
    query over the candidates it scores (``minmax`` or ``zscore``). A candidate a field does
    not score counts as that field's lowest normalised score in the row (no better than the
    worst it scored; 0 under min-max). NaN for padding."""
    fused = np.zeros(doc_ids.shape)
    for scores, weight in zip(field_scores, weights, strict=True):
        normed = NORMALIZATIONS[normalization](scores)
        with np.errstate(all="ignore"):
            floor = np.nanmin(np.where(np.isnan(normed), np.inf, normed), axis=1, keepdims=True)
        floor = np.where(np.isfinite(floor), floor, 0.0)
        fused += _column(weight) * np.where(np.isnan(normed), floor, normed)
    return np.where(doc_ids != None, fused, np.nan)  # noqa: E711


def fuse(
    method: str,
    field_scores: Sequence[np.ndarray],
    doc_ids: np.ndarray,
    weights: Sequence[Any],
    *,
    normalization: str = "minmax",
    rrf_k: int = RRF_K,
) -> np.ndarray:
    """``rrf`` (with ``rrf_k``) or ``weighted`` (with ``normalization``) fusion, (Q, U)
    float64; ``auto`` is ``rrf`` whose caller passes ``agreement_weights`` and ``rrf_k``;
    ``identity`` is the one field's own scores."""
    if method == IDENTITY:
        (scores,) = field_scores
        return np.where(doc_ids == None, np.nan, scores).astype(np.float64)  # noqa: E711
    if method in ("rrf", "auto"):
        return rrf(field_scores, doc_ids, weights, k=rrf_k)
    if method == "weighted":
        if normalization not in NORMALIZATIONS:
            raise InputError(
                f"--normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}"
            )
        return weighted(field_scores, doc_ids, weights, normalization=normalization)
    raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got {method!r}")


def check_weights(weights: dict[str, float] | None, fields: Sequence[str]) -> list[float]:
    """Weights in the order of ``fields``: every name a fused field, none negative, not all
    zero; fields left out weigh 0 when weights are given, and all weigh 1 otherwise."""
    if weights is None:
        return [1.0] * len(fields)
    unknown = [name for name in weights if name not in fields]
    if unknown:
        raise InputError(
            f"--weights names field(s) {', '.join(map(repr, unknown))} that are not among the "
            f"fused fields ({', '.join(fields)}); weigh only those (or add them to --fields)"
        )
    for name, value in weights.items():
        if not np.isfinite(value) or value < 0:
            raise InputError(
                f"--weights: field {name!r} has weight {value}; weights must be finite and >= 0"
            )
    if sum(weights.values()) <= 0:
        raise InputError(
            f"--weights {weights} are all zero; give at least one field a positive weight"
        )
    out = np.array([float(weights.get(name, 0.0)) for name in fields])
    top = out.max()
    if not WEIGHT_RANGE[0] <= top <= WEIGHT_RANGE[1]:
        out = out / top  # only ratios rank; scores then stay within float32's range
    return [float(w) for w in out]


def parse_weights(text: str) -> dict[str, float]:
    """``"a=0.7,b=0.3"`` -> ``{"a": 0.7, "b": 0.3}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if sep and name.strip() in out:
            raise InputError(
                f"--weights {text!r} weighs field {name.strip()!r} twice; give each field one "
                "weight"
            )
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise InputError(
                f"--weights {text!r}: expected NAME=NUMBER[,NAME=NUMBER...], got {part!r}"
            )
    if not out:
        raise InputError(f"--weights {text!r} names no field; expected NAME=NUMBER[,...]")
    return out


# ------------------------------------------------------------- fusing scores known to a bound
# A rescoring field may first know each candidate's score only within a bound (the fast pass,
# ``retriever.bounded_scores``). The functions below bound the fused score over every choice of
# scores within [low, high] (low == high: known) and name the unknown scores a fused score
# depends on, so that only those are computed exactly (``field_search``): the fused top k and
# its scores are then those of the exact scores.


def _rank_bounds(low: np.ndarray, high: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """Best and worst 1-based rank of each of one row's scored candidates (``ranks``'s order:
    by score, equal known scores by doc_id) over every choice of scores within the bounds."""
    n = low.size
    best = 1 + n - np.searchsorted(np.sort(low), high, side="right")
    worst = n - np.searchsorted(np.sort(high), low, side="left")
    known = np.flatnonzero(low == high)
    if np.unique(low[known]).size < known.size:  # equal known scores: ranked by doc_id
        order = known[np.lexsort((ids[known], -low[known]))]
        value = low[order]
        starts = np.flatnonzero(np.r_[True, value[1:] != value[:-1]])
        sizes = np.diff(np.r_[starts, value.size])
        place = np.arange(value.size) - np.repeat(starts, sizes)  # ties before it
        best[order] += place
        worst[order] -= np.repeat(sizes, sizes) - 1 - place
    return best, worst


def _normalized_bounds(
    low: np.ndarray, high: np.ndarray, normalization: str
) -> tuple[np.ndarray, np.ndarray]:
    """One row's normalised scores (NaN: the row's floor, as ``weighted`` counts them) over
    every choice within the bounds; -inf/inf where the row's scale is not known well enough."""
    valid = ~np.isnan(low)
    if not valid.any():
        return np.zeros(low.shape), np.zeros(low.shape)
    if np.array_equal(low[valid], high[valid]):
        normed = NORMALIZATIONS[normalization](low[None])[0]
        filled = np.where(valid, normed, np.nanmin(normed))
        return filled, filled
    m_lo, m_hi, top_lo, top_hi = (
        low[valid].min(),
        high[valid].min(),
        low[valid].max(),
        high[valid].max(),
    )
    if normalization != "minmax" or top_lo <= m_hi:
        return np.full(low.shape, -np.inf), np.full(low.shape, np.inf)
    # (s - min) / (max - min) grows with s and falls with min and max; the floor is 0.
    lower = np.clip((low - m_hi) / (top_hi - m_hi), 0.0, 1.0)
    upper = np.clip((high - m_lo) / (top_lo - m_lo), 0.0, 1.0)
    return np.where(valid, lower, 0.0), np.where(valid, upper, 0.0)


def fuse_bounds(
    method: str,
    lows: Sequence[np.ndarray],
    highs: Sequence[np.ndarray],
    doc_ids: np.ndarray,
    weights: Sequence[Any],
    *,
    normalization: str = "minmax",
    rrf_k: int = RRF_K,
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds, (Q, U), of ``fuse`` over every choice of each field's scores
    within [low, high] (NaN in both: no score); equal, and equal to ``fuse`` of the known
    scores, where every score a candidate's fused score depends on is known."""
    if method == IDENTITY:
        return fuse(method, lows, doc_ids, weights), fuse(method, highs, doc_ids, weights)
    lower, upper = np.zeros(doc_ids.shape), np.zeros(doc_ids.shape)
    for low, high, weight in zip(lows, highs, weights, strict=True):
        field_lo, field_hi = np.zeros(doc_ids.shape), np.zeros(doc_ids.shape)
        for q in range(doc_ids.shape[0]):
            w = float(weight[q]) if np.ndim(weight) else weight
            if method in ("rrf", "auto"):
                cols = np.flatnonzero(~np.isnan(low[q]) & (doc_ids[q] != None))  # noqa: E711
                best, worst = _rank_bounds(
                    low[q, cols], high[q, cols], doc_ids[q, cols].astype(str)
                )
                field_lo[q, cols] = w / (rrf_k + worst)
                field_hi[q, cols] = w / (rrf_k + best)
            else:
                if w == 0:  # counts for nothing, however unknown its scale (0 * inf)
                    continue
                normed_lo, normed_hi = _normalized_bounds(low[q], high[q], normalization)
                field_lo[q], field_hi[q] = w * normed_lo, w * normed_hi
        lower += field_lo
        upper += field_hi
    padding = doc_ids == None  # noqa: E711
    return np.where(padding, np.nan, lower), np.where(padding, np.nan, upper)


def entangled(
    method: str,
    low: np.ndarray,
    high: np.ndarray,
    unsure: np.ndarray,
    *,
    normalization: str = "minmax",
) -> np.ndarray:
    """(Q, U) the unknown scores of one field (low < high) that the fused scores of the
    ``unsure`` candidates depend on: their own; under ``rrf`` every one whose bounds overlap
    theirs (it may rank on either side); under min-max every one that may be the row's least
    or greatest; under z-score every one in the row."""
    unknown = low < high  # NaN compares False
    out = unknown & unsure
    if method == IDENTITY:  # each fused score is the candidate's own
        return out
    for q in np.flatnonzero((unsure & ~np.isnan(low)).any(axis=1)):
        row_unsure = np.flatnonzero(unsure[q] & ~np.isnan(low[q]))
        if method in ("rrf", "auto"):
            overlap = (low[q][None, :] <= high[q, row_unsure, None]) & (
                high[q][None, :] >= low[q, row_unsure, None]
            )
            out[q] |= unknown[q] & overlap.any(axis=0)
        elif normalization == "minmax":
            valid = ~np.isnan(low[q])
            least, greatest = high[q, valid].min(), low[q, valid].max()
            out[q] |= unknown[q] & ((low[q] <= least) | (high[q] >= greatest))
        else:
            out[q] |= unknown[q]
    return out
