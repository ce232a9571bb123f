"""Exact late-interaction (MaxSim / Chamfer) scoring kernels. Arrays in, arrays out.

A multi-vector set is a flat (N, d) array plus (n + 1,) int64 offsets. Scores accumulate in
float32 whatever the storage dtype, and no set is ever padded, so a document's score never
depends on which other documents share its block. Imports numpy and torch only.
"""

from __future__ import annotations

import numpy as np
import torch

# Document tokens per matrix product; (block, query tokens) float32 similarities stay in cache.
_BLOCK_TOKENS = 1 << 16


def _segment_max(sim: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, M) -> (n, M): max over consecutive row segments of the given lengths."""
    n = lengths.numel()
    first = int(lengths[0])
    if bool((lengths == first).all()):
        return sim.view(n, first, sim.shape[1]).amax(dim=1)
    if sim.device.type == "cpu":
        # torch's 2-D scatter_reduce_ on CPU costs ~50-100 ms per call with 2 threads (torch
        # 2.15); numpy's reduceat takes the same maxima in one pass.
        starts = (torch.cumsum(lengths, 0) - lengths).numpy()
        return torch.from_numpy(np.maximum.reduceat(sim.numpy(), starts, axis=0))
    owner = torch.repeat_interleave(torch.arange(n, device=sim.device), lengths)
    out = torch.full((n, sim.shape[1]), -torch.inf, dtype=sim.dtype, device=sim.device)
    return out.scatter_reduce_(0, owner.unsqueeze(1).expand_as(sim), sim, reduce="amax")


def _segment_sum_columns(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(n, M) -> (n, Q): sum over consecutive column segments of the given lengths."""
    q = lengths.numel()
    first = int(lengths[0])
    if bool((lengths == first).all()):
        return values.view(values.shape[0], q, first).sum(dim=2)
    owner = torch.repeat_interleave(torch.arange(q, device=values.device), lengths)
    out = torch.zeros((values.shape[0], q), dtype=values.dtype, device=values.device)
    return out.index_add_(1, owner, values)


def maxsim(
    query_vectors: np.ndarray | torch.Tensor,
    query_offsets: np.ndarray,
    doc_vectors: np.ndarray | torch.Tensor,
    doc_offsets: np.ndarray,
    *,
    device: str | torch.device | None = None,
    block_tokens: int = _BLOCK_TOKENS,
) -> np.ndarray:
    """MaxSim of every query against every document.

    ``score(q, D) = sum over query tokens t of max over document tokens u of <t, u>``.

    Parameters
    ----------
    query_vectors
        (Nq, d) float array: all queries' token vectors, concatenated.
    query_offsets
        (Q + 1,) int64 boundaries of each query in ``query_vectors``.
    doc_vectors
        (N, d) float array (float16 or float32; memory-mapped arrays are read block by block).
    doc_offsets
        (n + 1,) int64 boundaries of each document; every document has at least one vector.
    device
        torch device for the products (``"cuda"`` for a GPU); the CPU by default.
    block_tokens
        Document tokens per matrix product.

    Returns
    -------
    (Q, n) float32 scores.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    q_offsets = np.asarray(query_offsets, dtype=np.int64)
    d_offsets = np.asarray(doc_offsets, dtype=np.int64)
    queries = torch.as_tensor(np.asarray(query_vectors, dtype=np.float32)).to(dev)  # (Nq, d)
    q_lengths = torch.from_numpy(np.diff(q_offsets)).to(dev)  # (Q,)
    n = d_offsets.size - 1
    out = np.empty((q_offsets.size - 1, n), dtype=np.float32)
    start = 0
    while start < n:
        stop = int(np.searchsorted(d_offsets, d_offsets[start] + block_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        block = doc_vectors[d_offsets[start] : d_offsets[stop]]
        tokens = torch.as_tensor(np.asarray(block)).to(dev, torch.float32)  # (Nb, d)
        sim = tokens @ queries.T  # (Nb, Nq)
        lengths = torch.from_numpy(np.diff(d_offsets[start : stop + 1])).to(dev)
        best = _segment_max(sim, lengths)  # (nb, Nq)
        out[:, start:stop] = _segment_sum_columns(best, q_lengths).T.cpu().numpy()
        start = stop
    return out


def maxsim_pairs(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """MaxSim of one query, (Tq, d), against n documents: (n,) float32."""
    offsets = np.array([0, len(query_vectors)], dtype=np.int64)
    return maxsim(query_vectors, offsets, doc_vectors, doc_offsets, device=device)[0]
