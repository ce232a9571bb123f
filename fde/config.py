"""``FDEConfig``: the parameters of a MUVERA fixed-dimensional encoding.

Mirrors the reference's ``FixedDimensionalEncodingConfig`` proto (google/graph-mining,
``sketching/point_cloud/fixed_dimensional_encoding_config.proto``) field by field. Imports only
the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from fde.errors import FDEInputError

ProjectionType = Literal["identity", "ams_sketch"]
_PROJECTION_TYPES = ("identity", "ams_sketch")
_MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class FDEConfig:
    """Parameters of a MUVERA fixed-dimensional encoding.

    Parameters
    ----------
    dimension
        Dimension ``d`` of the input vectors.
    num_repetitions
        Independent repetitions ``R``; repetition ``r`` draws its randomness from ``seed + r``.
    num_simhash_projections
        SimHash bits ``k`` per repetition, giving ``2**k`` partitions; the reference accepts
        0 to 30.
    seed
        Seed shared by queries and documents (they must use the same config to be comparable).
    projection_type
        ``"identity"`` keeps the ``d`` coordinates in each partition block; ``"ams_sketch"``
        reduces them to ``projection_dimension`` with a CountSketch.
    projection_dimension
        Block width for ``"ams_sketch"``; must be None for ``"identity"``.
    fill_empty_partitions
        Documents only: an empty partition takes the projected vector of the point whose SimHash
        bits are Hamming-nearest to it. Queries ignore it (the reference refuses it for queries;
        here one config serves both sides).
    final_projection_dimension
        If set, the whole FDE is CountSketched down to this many coordinates (seeded by ``seed``).
    """

    dimension: int
    num_repetitions: int = 1
    num_simhash_projections: int = 0
    seed: int = 1
    projection_type: ProjectionType = "identity"
    projection_dimension: int | None = None
    fill_empty_partitions: bool = False
    final_projection_dimension: int | None = None

    def __post_init__(self) -> None:
        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FDEInputError(f"FDEConfig.{name} must be a positive int, got {value!r}")

        positive_int("dimension", self.dimension)
        positive_int("num_repetitions", self.num_repetitions)
        k = self.num_simhash_projections
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 30:
            raise FDEInputError(
                f"FDEConfig.num_simhash_projections must be an int in [0, 30] (the reference "
                f"rejects larger values), got {k!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise FDEInputError(f"FDEConfig.seed must be an int, got {self.seed!r}")
        if not 0 <= self.seed <= _MAX_SEED - self.num_repetitions:
            raise FDEInputError(
                f"FDEConfig.seed must be in [0, {_MAX_SEED - self.num_repetitions}] so that "
                f"seed + repetition fits the reference's int32 seed, got {self.seed}"
            )
        if self.projection_type not in _PROJECTION_TYPES:
            raise FDEInputError(
                f"FDEConfig.projection_type must be one of {_PROJECTION_TYPES}, "
                f"got {self.projection_type!r}"
            )
        if self.projection_type == "ams_sketch":
            if self.projection_dimension is None:
                raise FDEInputError(
                    "FDEConfig.projection_dimension is required with projection_type='ams_sketch'"
                    " (the width each partition block is sketched to, e.g. 16)"
                )
            positive_int("projection_dimension", self.projection_dimension)
        elif self.projection_dimension is not None:
            raise FDEInputError(
                "FDEConfig.projection_dimension only applies to projection_type='ams_sketch'; "
                f"got {self.projection_dimension!r} with projection_type='identity'"
            )
        if not isinstance(self.fill_empty_partitions, bool):
            raise FDEInputError(
                "FDEConfig.fill_empty_partitions must be a bool, "
                f"got {self.fill_empty_partitions!r}"
            )
        if self.final_projection_dimension is not None:
            positive_int("final_projection_dimension", self.final_projection_dimension)

    @property
    def block_dimension(self) -> int:
        """Width of one partition block: ``projection_dimension`` or ``dimension``."""
        return (
            self.projection_dimension if self.projection_dimension is not None else self.dimension
        )

    @property
    def num_partitions(self) -> int:
        """Partitions per repetition, ``2**num_simhash_projections``."""
        return 1 << self.num_simhash_projections

    @property
    def raw_dimension(self) -> int:
        """FDE length before the final projection: ``R * 2**k * block_dimension``."""
        return self.num_repetitions * self.num_partitions * self.block_dimension

    @property
    def output_dimension(self) -> int:
        """Length of the vectors ``encode_documents`` and ``encode_queries`` return."""
        if self.final_projection_dimension is not None:
            return self.final_projection_dimension
        return self.raw_dimension

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``FDEConfig(**d)`` rebuilds the config."""
        return dataclasses.asdict(self)
