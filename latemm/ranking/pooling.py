"""Token pooling: fewer vectors per document by hierarchical clustering of its vectors.

Each document's T vectors are clustered (Ward linkage on cosine geometry, as in colpali-engine's
hierarchical token pooler) into ``ceil(T / pool_factor)`` groups; each group becomes the
normalised mean of its members. Storage and MaxSim cost fall by about the pool factor; the
quality cost is measured in ``experiments/``. Arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from index_store.errors import InputError


def pool_tokens(
    vectors: np.ndarray, offsets: np.ndarray, pool_factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pool each document's vectors.

    Parameters
    ----------
    vectors
        (N, d) float32, all documents' vectors.
    offsets
        (n + 1,) int64 document boundaries.
    pool_factor
        Target reduction: a document of T vectors keeps ``ceil(T / pool_factor)``.

    Returns
    -------
    (M, d) float32 pooled vectors and (n + 1,) int64 offsets.
    """
    if pool_factor < 1:
        raise InputError(f"pool_factor must be >= 1, got {pool_factor}")
    if pool_factor == 1:
        return vectors, offsets
    pooled, lengths = [], []
    for i in range(offsets.size - 1):
        doc = vectors[offsets[i] : offsets[i + 1]].astype(np.float32)
        target = max(1, -(-len(doc) // pool_factor))
        if len(doc) <= target:
            pooled.append(doc)
            lengths.append(len(doc))
            continue
        unit = doc / np.maximum(np.linalg.norm(doc, axis=1, keepdims=True), 1e-12)
        labels = fcluster(linkage(unit, method="ward"), t=target, criterion="maxclust") - 1
        k = int(labels.max()) + 1
        sums = np.zeros((k, doc.shape[1]), dtype=np.float32)
        np.add.at(sums, labels, doc)
        counts = np.bincount(labels, minlength=k)[:, None]
        means = (sums / counts).astype(np.float32)
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        pooled.append(means)
        lengths.append(k)
    out_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    return np.concatenate(pooled).astype(np.float32), out_offsets
