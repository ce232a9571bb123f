"""ColPali-shaped synthetic corpora whose recall numbers mean something (see BENCHMARKS.md).

Real page embeddings are clustered: most patches of a page are near-duplicates of a few
background directions, the rest cover a handful of topics, and a query's tokens land near the
topics of the page that answers it. The generator below follows that recipe, seeded:

- a pool of ``n_concepts`` unit concept directions in d dimensions and ``n_background`` shared
  background directions;
- each page: ``background_share`` of its patches near a background direction, the rest near
  ``topics_per_page`` concepts picked for the page; patch = normalise(direction + noise);
- each query: ``query_tokens`` tokens, most near concepts of one target page, a few unrelated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticCorpus:
    dim: int = 128
    tokens_per_page: int = 1030
    n_concepts: int = 4096
    n_background: int = 8
    topics_per_page: int = 6
    background_share: float = 0.6
    noise: float = 0.35
    query_tokens: int = 24
    unrelated_query_tokens: int = 4
    seed: int = 0

    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        concepts = rng.standard_normal((self.n_concepts, self.dim)).astype(np.float32)
        concepts /= np.linalg.norm(concepts, axis=1, keepdims=True)
        background = rng.standard_normal((self.n_background, self.dim)).astype(np.float32)
        background /= np.linalg.norm(background, axis=1, keepdims=True)
        return concepts, background

    def page_topics(self, page: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, page])
        return rng.choice(self.n_concepts, self.topics_per_page, replace=False)

    def pages(self, start: int, stop: int) -> np.ndarray:
        """Pages [start, stop) as a (n, T, d) float32 array (unit vectors)."""
        concepts, background = self._pool()
        n, T = stop - start, self.tokens_per_page
        out = np.empty((n, T, self.dim), dtype=np.float32)
        n_bg = int(round(self.background_share * T))
        for i, page in enumerate(range(start, stop)):
            rng = np.random.default_rng([self.seed, 2, page])
            topics = self.page_topics(page)
            directions = np.concatenate(
                [
                    background[rng.integers(0, self.n_background, n_bg)],
                    concepts[topics[rng.integers(0, topics.size, T - n_bg)]],
                ]
            )
            out[i] = directions + self.noise / np.sqrt(self.dim) * rng.standard_normal(
                (T, self.dim)
            ).astype(np.float32)
        out /= np.linalg.norm(out, axis=2, keepdims=True)
        return out

    def batches(
        self, n_pages: int, batch: int = 256, start: int = 0
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Pages ``start:n_pages`` in batches (every page is seeded by its number alone)."""
        for first in range(start, n_pages, batch):
            yield first, self.pages(first, min(n_pages, first + batch))

    def queries(self, n_queries: int, n_pages: int) -> tuple[np.ndarray, np.ndarray]:
        """(queries (Q, Tq, d) float32, target page of each (Q,))."""
        concepts, _ = self._pool()
        rng = np.random.default_rng([self.seed, 3])
        targets = rng.integers(0, n_pages, n_queries)
        out = np.empty((n_queries, self.query_tokens, self.dim), dtype=np.float32)
        related = self.query_tokens - self.unrelated_query_tokens
        for q, page in enumerate(targets):
            topics = self.page_topics(int(page))
            directions = np.concatenate(
                [
                    concepts[topics[rng.integers(0, topics.size, related)]],
                    concepts[rng.integers(0, self.n_concepts, self.unrelated_query_tokens)],
                ]
            )
            out[q] = directions + 1.5 * self.noise / np.sqrt(self.dim) * rng.standard_normal(
                directions.shape
            ).astype(np.float32)
        out /= np.linalg.norm(out, axis=2, keepdims=True)
        return out, targets
