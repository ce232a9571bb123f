"""``IndexConfig``: what an index stores and how its first stage is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fde import FDEConfig
from index_store.codecs import DTYPES
from index_store.errors import InputError


def default_fde_config(dim: int) -> FDEConfig:
    """The MUVERA paper's default: R=20, k=5, AMS projection to 16, empty partitions filled."""
    return FDEConfig(
        dimension=dim,
        num_repetitions=20,
        num_simhash_projections=5,
        projection_type="ams_sketch",
        projection_dimension=16,
        fill_empty_partitions=True,
    )


@dataclass(frozen=True)
class IndexConfig:
    """Parameters fixed when an index is created.

    Parameters
    ----------
    dim
        Dimension of the stored token vectors.
    dtype
        Storage of the multi-vectors: ``float16`` (default), ``float32``, ``int8`` (per-vector
        scale) or ``binary`` (1-bit signs).
    fde
        The FDE config of the first stage (default: ``default_fde_config(dim)``).
    faiss_factory
        faiss ``index_factory`` string over the FDEs, inner-product metric: ``Flat`` (default),
        ``HNSW32``, ``IVF256,PQ64``, ...
    encoder
        Identity of the encoder that produced the vectors (``EncoderInfo.to_dict()``), or None
        for precomputed embeddings.
    """

    dim: int
    dtype: str = "float16"
    fde: FDEConfig | None = None
    faiss_factory: str = "Flat"
    encoder: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise InputError(f"IndexConfig.dim must be a positive int, got {self.dim!r}")
        if self.dtype not in DTYPES:
            raise InputError(f"IndexConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.fde is None:
            object.__setattr__(self, "fde", default_fde_config(self.dim))
        assert self.fde is not None
        if self.fde.dimension != self.dim:
            raise InputError(
                f"IndexConfig.fde.dimension ({self.fde.dimension}) must equal dim ({self.dim})"
            )
        if not isinstance(self.faiss_factory, str) or not self.faiss_factory:
            raise InputError(
                f"IndexConfig.faiss_factory must be a faiss factory string, got {self.faiss_factory!r}"
            )

    @property
    def fde_config(self) -> FDEConfig:
        assert self.fde is not None
        return self.fde

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "dtype": self.dtype,
            "fde": self.fde_config.to_dict(),
            "faiss_factory": self.faiss_factory,
            "encoder": self.encoder,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> IndexConfig:
        return cls(
            dim=payload["dim"],
            dtype=payload["dtype"],
            fde=FDEConfig(**payload["fde"]),
            faiss_factory=payload["faiss_factory"],
            encoder=payload.get("encoder"),
        )
