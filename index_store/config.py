"""``IndexConfig``: what an index stores and how its first stage is built."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from fde import FDEConfig
from index_store.codecs import DTYPES, check_dim, is_residual
from index_store.errors import FDEInputError, InputError

# Storage of the optional refine copy (``IndexConfig.refine``), and the compact codes it may
# accompany: a copy is worth its bytes only beside codes that lose ranking precision.
REFINE_DTYPES = ("int8", "float16")
REFINED_DTYPES = ("binary", "pq1", "pq2")
# 32 keeps recall@10 at 0.99 on 3,000 ColPali-shaped pages, but 100k pages need 128 at C=384
# (0.99; 64 gives 0.925): experiments/RESULTS.md section 5c.
DEFAULT_REFINE_DEPTH = 128
# Where a residual codec's codebook lives (``IndexConfig.residual_codebook``).
RESIDUAL_CODEBOOKS = ("segment", "index")
# How a search finds candidates (``IndexConfig.first_stage``): the FDE + faiss, or for residual
# codes PLAID's candidate generation from the tokens' centroids (latemm.retrieval.retriever).
FIRST_STAGES = ("fde", "centroids")

FACTORY_FORMS = (
    "Flat; HNSW<M> (M >= 2), optionally followed by ,Flat ,SQ8 ,SQ4 ,SQfp16 or ,PQ<m>; "
    "IVF<n> followed by ,Flat ,SQ8 or ,PQ<m>[x<b>]; PQ<m>[x<b>] "
    "(m divides the FDE dimension, 1 <= b <= 16); PQ<m>x4fs: one 4-bit PQ codebook per index "
    "and one fast-scan search over all segments (the default, auto: PQ<D/8>x4fs)"
)
# SimHash bits of a residual index's default FDE: 2^4 partitions, 5,120 dimensions, so ``auto``
# gives PQ640x4fs (320 bytes per document, not 640, and half the FDE codebook). Residual codes
# are ~7x smaller than float16's, so the first stage was 11% of a res2 index's bytes. Vaswani
# MiniLM, recall@10 against exact after rescoring 512 candidates (experiments.residual_first_stage):
# res4 0.963 / res2 0.918 against 0.966 / 0.922 with k=5 and PQ1280x4fs; PQ640x4fs on the k=5
# FDE (dsub 16) is no better and keeps the 10,240-d float32 FDEs of pre-codebook segments;
# ColPali-shaped pages' first stage 0.990 at 512 (k=5, PQ1280: 0.992; k=5, PQ640: 0.974).
RESIDUAL_SIMHASH_PROJECTIONS = 4
# The default: multi-vector indexes get the global fast-scan first stage (index_store.first_stage),
# single-vector ones an exact Flat index per segment.
AUTO_FACTORY = "auto"
_FACTORY = re.compile(
    r"(?P<flat>Flat)"
    r"|HNSW(?P<hnsw>\d+)(?:,(?P<hnsw_code>Flat|SQ8|SQ4|SQfp16|PQ(?P<hnsw_pq>\d+)))?"
    r"|IVF(?P<ivf>\d+),(?P<ivf_code>Flat|SQ8|PQ(?P<ivf_pq>\d+)(?:x(?P<ivf_bits>\d+))?)"
    r"|PQ(?P<pq>\d+)(?:x(?P<pq_bits>\d+))?"
    r"|PQ(?P<fs>\d+)x4fs"
)


def faiss_fourccs(factory: str) -> frozenset[bytes]:
    """The 4-byte tags faiss writes first when it serializes an index built from ``factory``
    (a valid one, see ``check_factory``); a file starting otherwise was not written by us."""
    match = _FACTORY.fullmatch(factory)
    assert match is not None, factory  # checked by IndexConfig
    if match["flat"]:
        return frozenset({b"IxFI"})
    if match["hnsw"]:
        code = match["hnsw_code"] or "Flat"
        tag = {"F": b"IHNf", "S": b"IHNs", "P": b"IHNp"}[code[0]]
        return frozenset({tag})
    if match["ivf"]:
        return frozenset({{"F": b"IwFl", "S": b"IwSq", "P": b"IwPQ"}[match["ivf_code"][0]]})
    if match["fs"]:  # segments written before the codebook existed keep an exact Flat index
        return frozenset({b"IxFI"})
    return frozenset({b"IxPq"})


def check_factory(factory: object, fde_dimension: int) -> None:
    """Refuse a faiss factory string we do not build (faiss aborts the process on some, e.g.
    ``HNSW0``), with the accepted forms."""
    match = _FACTORY.fullmatch(factory) if isinstance(factory, str) else None

    def bad(why: str) -> InputError:
        return InputError(
            f"IndexConfig.faiss_factory {factory!r} {why}. Accepted forms: {FACTORY_FORMS}; "
            "e.g. Flat, HNSW32, IVF256,PQ64"
        )

    if match is None:
        raise bad("is not a faiss index this store builds")
    numbers = {k: int(v) for k, v in match.groupdict().items() if v and v.isdigit()}
    if numbers.get("hnsw", 2) < 2:
        raise bad("needs M >= 2 (HNSW<M>)")
    if any(v < 1 for v in numbers.values()):
        raise bad("has a zero where a positive number is needed")
    for key in ("ivf_bits", "pq_bits"):
        if numbers.get(key, 8) > 16:
            raise bad("has more than 16 bits per PQ code")
    for key in ("hnsw_pq", "ivf_pq", "pq", "fs"):
        if key in numbers and fde_dimension % numbers[key]:
            raise bad(
                f"splits the {fde_dimension}-dimensional FDE into {numbers[key]} PQ "
                "sub-vectors, which does not divide it"
            )


# What a new index stores when no dtype is named (``new_index_dtype``): res4 with the centroid
# first stage and a depth of 128 held Vaswani MiniLM's recall@10 (0.976 against exact) and
# nDCG@10 (within 0.005) at 1/7.5 of float16 + Flat's bytes and 0.96x its search time, and beat
# float16 on MMLongBench's long pages (0.953 against 0.930, 0.88x): experiments/RESULTS.md 5d.
DEFAULT_DTYPE = "res4"


def new_index_dtype(dtype: str, dim: int, single_vector: bool = False) -> str:
    """``dtype`` for a new index, ``auto`` resolved: ``DEFAULT_DTYPE`` for token vectors whose
    dimension it packs, float16 for single vectors (one per page: nothing to cluster) or an
    odd dimension."""
    if dtype != "auto":
        return dtype
    if single_vector or dim % (8 // 4):
        return "float16"
    return DEFAULT_DTYPE


def default_factory(faiss_dimension: int, single_vector: bool) -> str:
    """What ``faiss_factory="auto"`` becomes: ``PQ<D/8>x4fs`` (8-dimensional sub-vectors, 4 bits:
    640 bytes per 10,240-dimensional FDE; experiments/bench_first_stage.py), or ``Flat`` for a
    single-vector index or an FDE dimension 8 does not divide."""
    if single_vector or faiss_dimension % 8:
        return "Flat"
    return f"PQ{faiss_dimension // 8}x4fs"


def default_fde_config(dim: int, *, dtype: str = "float16") -> FDEConfig:
    """The MUVERA paper's default: R=20, k=5, AMS projection to 16, empty partitions filled
    (10,240 dimensions). For a residual ``dtype`` (res1 / res2 / res4), k=RESIDUAL_SIMHASH_PROJECTIONS
    (see there): half the FDE, so ``auto`` gives half the first-stage code."""
    return FDEConfig(
        dimension=dim,
        num_repetitions=20,
        num_simhash_projections=RESIDUAL_SIMHASH_PROJECTIONS if is_residual(dtype) else 5,
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
        The FDE config of the first stage (default: ``default_fde_config(dim, dtype=dtype)``:
        5,120 dimensions for a residual dtype, 10,240 otherwise).
    faiss_factory
        ``auto`` (default): ``PQ<D/8>x4fs``, one product-quantisation codebook per index and one
        fast-scan first stage over all segments (``index_store.first_stage``); ``Flat`` for a
        single-vector index. Otherwise a faiss ``index_factory`` string over the FDEs, built per
        segment, inner-product metric: ``Flat``, ``HNSW32``, ``IVF256,PQ64``, ...
    encoder
        Identity of the encoder that produced the vectors (``EncoderInfo.to_dict()``), or None
        for precomputed embeddings.
    single_vector
        Every document has exactly one vector, and faiss indexes those vectors themselves (no
        FDE): a query's summed vectors against them give exact MaxSim (``fde`` is then unused).
    refine
        None (default), or ``int8`` / ``float16``: beside compact codes (``binary``, ``pq1``,
        ``pq2``) every segment also stores the vectors in this dtype (``refine-vectors.npy``),
        read only for the final pass: a query's candidates are scored on the compact codes,
        and its ``refine_depth`` best are rescored exactly from the copy (faiss's
        ``IndexRefine``, for token vectors). The copy is counted in the index's bytes on
        disk; a search touches it for ``refine_depth`` pages per query. The first stage's
        FDEs are computed from the copy.
    refine_depth
        How many of each query's best candidates on the compact codes are rescored from the
        refine copy (at least the search's k).
    residual_codebook
        For a residual ``dtype`` (``res1`` / ``res2`` / ``res4``): ``segment`` (default, and
        every index written before the choice existed) trains a codebook per segment and
        stores it in the segment; ``index`` trains one codebook for the whole index
        (``vectors-codebook-g<gen>.npy``, see ``index_store.store``) once the index holds
        enough vectors, stores the segments written before it in float16 and rewrites them
        under it, and codes every later segment with it (what ``latemm index`` creates).
    first_stage
        The first stage a search takes when it names none: ``fde`` (default, and every index
        written before the choice existed), or for residual codes ``centroids`` (PLAID's
        candidate generation; what ``latemm index`` records for a residual index, with
        ``refine_depth`` as the candidates each query decodes: ``default_depth``).
    """

    dim: int
    dtype: str = "float16"
    fde: FDEConfig | None = None
    faiss_factory: str = AUTO_FACTORY
    encoder: dict[str, Any] | None = field(default=None, compare=False)
    single_vector: bool = False
    refine: str | None = None
    refine_depth: int = DEFAULT_REFINE_DEPTH
    residual_codebook: str = "segment"
    first_stage: str = "fde"

    def __post_init__(self) -> None:
        if not isinstance(self.single_vector, bool):
            raise InputError(
                f"IndexConfig.single_vector must be True or False, got {self.single_vector!r}"
            )
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise InputError(f"IndexConfig.dim must be a positive int, got {self.dim!r}")
        if self.dtype not in DTYPES:
            raise InputError(f"IndexConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        check_dim(self.dtype, self.dim)
        self._check_refine()
        if self.residual_codebook not in RESIDUAL_CODEBOOKS:
            raise InputError(
                f"IndexConfig.residual_codebook must be one of {RESIDUAL_CODEBOOKS}, got "
                f"{self.residual_codebook!r}"
            )
        if self.residual_codebook == "index" and not is_residual(self.dtype):
            raise InputError(
                f"IndexConfig.residual_codebook='index' shares one residual codebook, but this "
                f"index stores {self.dtype}; use it with dtype res1, res2 or res4, or leave it out"
            )
        self._check_first_stage()
        if self.fde is None:
            object.__setattr__(self, "fde", default_fde_config(self.dim, dtype=self.dtype))
        assert self.fde is not None
        if self.fde.dimension != self.dim:
            raise InputError(
                f"IndexConfig.fde.dimension ({self.fde.dimension}) must equal dim ({self.dim})"
            )
        if self.faiss_factory == AUTO_FACTORY:
            factory = default_factory(self.faiss_dimension, self.single_vector)
            object.__setattr__(self, "faiss_factory", factory)
        check_factory(self.faiss_factory, self.faiss_dimension)
        if self.encoder is not None and not isinstance(self.encoder, dict):
            raise InputError(
                f"IndexConfig.encoder must be a dict (EncoderInfo.to_dict()) or None, "
                f"got {self.encoder!r}"
            )

    def _check_refine(self) -> None:
        if self.refine is not None and self.refine not in REFINE_DTYPES:
            raise InputError(
                f"IndexConfig.refine must be None or one of {REFINE_DTYPES}, got {self.refine!r}"
            )
        if self.refine is not None and self.dtype not in REFINED_DTYPES:
            raise InputError(
                f"IndexConfig.refine={self.refine!r} keeps a copy beside compact codes, but this "
                f"index stores {self.dtype}; use it with dtype one of {REFINED_DTYPES} (e.g. "
                "--dtype pq1 --refine int8), or leave refine out"
            )
        depth = self.refine_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InputError(f"IndexConfig.refine_depth must be a positive int, got {depth!r}")

    def _check_first_stage(self) -> None:
        if self.first_stage not in FIRST_STAGES:
            raise InputError(
                f"IndexConfig.first_stage must be one of {FIRST_STAGES}, got {self.first_stage!r}"
            )
        if self.first_stage == "centroids" and not self.takes_centroids:
            raise InputError(
                "IndexConfig.first_stage='centroids' ranks pages by their tokens' residual-code "
                f"centroids, but this index stores {self.dtype}"
                f"{' single vectors' if self.single_vector else ''}; use it with a multi-vector "
                "index of dtype res1, res2 or res4, or leave it out"
            )

    @property
    def takes_centroids(self) -> bool:
        """Whether the centroid first stage can search this index: residual multi-vectors."""
        return is_residual(self.dtype) and not self.single_vector

    @property
    def default_depth(self) -> int | None:
        """The ``refine_depth`` a search takes when it names none: the recorded one for a refine
        copy or a recorded centroid first stage; None (decode every candidate) otherwise."""
        if self.refine is not None or self.first_stage == "centroids":
            return self.refine_depth
        return None

    @property
    def takes_refine_depth(self) -> bool:
        """Whether a search's ``refine_depth`` applies: each query's candidates are ranked on
        compact codes first and only the depth best scored exactly, from the refine copy, or,
        for a residual dtype, decoded (ranked by their tokens' centroids)."""
        return self.refine is not None or is_residual(self.dtype)

    @property
    def fde_config(self) -> FDEConfig:
        assert self.fde is not None
        return self.fde

    @property
    def faiss_dimension(self) -> int:
        """The dimension of what faiss indexes: the FDE's, or ``dim`` for single-vector."""
        return self.dim if self.single_vector else self.fde_config.output_dimension

    def to_dict(self) -> dict[str, Any]:
        out = {
            "dim": self.dim,
            "dtype": self.dtype,
            "fde": self.fde_config.to_dict(),
            "faiss_factory": self.faiss_factory,
            "encoder": self.encoder,
        }
        if self.single_vector:  # absent otherwise: multi-vector manifests stay as they were
            out["single_vector"] = True
        if self.refine is not None:  # likewise
            out["refine"] = self.refine
            out["refine_depth"] = self.refine_depth
        if self.residual_codebook != "segment":  # likewise
            out["residual_codebook"] = self.residual_codebook
        if self.first_stage != "fde":  # likewise; the search defaults it records
            out["first_stage"] = self.first_stage
            out["refine_depth"] = self.refine_depth
        return out

    @classmethod
    def from_dict(cls, payload: Any) -> IndexConfig:
        """Rebuild a config from ``to_dict``'s output; ``InputError`` naming the field otherwise."""
        if not isinstance(payload, dict):
            raise InputError(f"an IndexConfig must be a JSON object, got {type(payload).__name__}")
        missing = [k for k in ("dim", "dtype", "fde", "faiss_factory") if k not in payload]
        if missing:
            raise InputError(f"the IndexConfig lacks {', '.join(missing)}")
        fde = payload["fde"]
        if not isinstance(fde, dict):
            raise InputError(f"fde must be a JSON object (FDEConfig fields), got {fde!r}")
        try:
            fde_config = FDEConfig(**fde)
        except (TypeError, FDEInputError) as exc:
            raise InputError(f"fde: {exc}") from exc
        return cls(
            dim=payload["dim"],
            dtype=payload["dtype"],
            fde=fde_config,
            faiss_factory=payload["faiss_factory"],
            encoder=payload.get("encoder"),
            single_vector=payload.get("single_vector", False),
            refine=payload.get("refine"),
            refine_depth=payload.get("refine_depth", DEFAULT_REFINE_DEPTH),
            residual_codebook=payload.get("residual_codebook", "segment"),
            first_stage=payload.get("first_stage", "fde"),
        )

    def _default_first_stage(self, fde: FDEConfig | None) -> bool:
        """Whether this config's first stage is what ``IndexConfig`` gives by default over the
        FDE ``fde`` (None: the default FDE of its dtype)."""
        default = replace(self, fde=fde, faiss_factory="auto")
        return (self.fde, self.faiss_factory) == (default.fde, default.faiss_factory)

    def differences(self, other: IndexConfig) -> list[str]:
        """``"field: recorded X, requested Y"`` for each setting ``other`` changes."""
        mine, theirs = self.to_dict(), other.to_dict()
        # A residual index written when every dtype had the 10,240-d FDE (and its code), reopened
        # with the defaults of today: both are the default of their day, the recorded one stays.
        if (
            is_residual(self.dtype)
            and self._default_first_stage(default_fde_config(self.dim))
            and other._default_first_stage(None)
        ):
            theirs["fde"], theirs["faiss_factory"] = mine["fde"], mine["faiss_factory"]
        # Keys to_dict leaves out at their defaults.
        absent = {"single_vector": False, "refine": None, "residual_codebook": "segment"}
        return [
            f"{key}: recorded {mine.get(key, absent.get(key))!r}, "
            f"requested {theirs.get(key, absent.get(key))!r}"
            for key in (
                "dim",
                "dtype",
                "faiss_factory",
                "fde",
                "single_vector",
                "refine",
                "residual_codebook",
            )
            if mine.get(key, absent.get(key)) != theirs.get(key, absent.get(key))
        ]
