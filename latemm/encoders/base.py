"""What every encoder returns and promises. numpy only; no model code here.

An encoder turns documents (pages: text and/or image) and queries into multi-vectors: one flat
float32 (N, d) array plus (n + 1,) int64 offsets, padding already removed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index_store.errors import InputError


@dataclass(frozen=True)
class MultiVectors:
    """n multi-vector sets as a flat (N, d) float32 array and (n + 1,) int64 offsets."""

    vectors: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], dim: int) -> MultiVectors:
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        if not arrays:
            return cls(np.zeros((0, dim), np.float32), offsets)
        return cls(np.concatenate(arrays).astype(np.float32, copy=False), offsets)


@dataclass(frozen=True)
class EncoderInfo:
    """The identity of an encoder, recorded in an index manifest and checked at search time."""

    family: str
    name_or_path: str
    dim: int
    revision: str | None = None
    query_template: str | None = None
    document_template: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("family", "name_or_path"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InputError(f"EncoderInfo.{name} must be a non-empty string, got {value!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise InputError(f"EncoderInfo.dim must be a positive int, got {self.dim!r}")
        for name in ("revision", "query_template", "document_template"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InputError(f"EncoderInfo.{name} must be a string or None, got {value!r}")
        if not isinstance(self.options, dict):
            raise InputError(f"EncoderInfo.options must be a dict, got {self.options!r}")
        for key, value in self.options.items():
            if not isinstance(key, str) or not isinstance(
                value, (str, int, float, bool, type(None))
            ):
                raise InputError(
                    f"EncoderInfo.options[{key!r}] = {value!r}: options are JSON scalars "
                    "(str, int, float, bool or None) so that they round-trip through the manifest"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "name_or_path": self.name_or_path,
            "dim": self.dim,
            "revision": self.revision,
            "query_template": self.query_template,
            "document_template": self.document_template,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> EncoderInfo:
        """The inverse of ``to_dict`` (an index manifest's ``encoder`` entry), validated."""
        if not isinstance(payload, dict):
            raise InputError(f"an encoder record must be a dict, got {type(payload).__name__}")
        fields = {"family", "name_or_path", "dim", "revision", "query_template"}
        fields |= {"document_template", "options"}
        unknown = sorted(set(payload) - fields)
        missing = sorted({"family", "name_or_path", "dim"} - set(payload))
        if unknown or missing:
            raise InputError(
                f"encoder record {payload!r}: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown fields {unknown}" if unknown else "",
                        f"missing fields {missing}" if missing else "",
                    )
                    if part
                )
            )
        return cls(**{**payload, "options": dict(payload.get("options") or {})})


def is_compatible(
    recorded: EncoderInfo | dict[str, Any], other: EncoderInfo | dict[str, Any]
) -> str | None:
    """Whether vectors of ``other`` can share an index with (or search) vectors of ``recorded``.

    Two encoders are compatible when their records are equal: same family, model, revision,
    dimension, templates and options (everything an ``EncoderInfo`` holds changes the vectors;
    device, dtype and batch size are not recorded). Returns None when compatible, else the
    differences, e.g. ``"options.dim: 256 recorded, None given"``.
    """
    a = recorded.to_dict() if isinstance(recorded, EncoderInfo) else dict(recorded)
    b = other.to_dict() if isinstance(other, EncoderInfo) else dict(other)
    flat_a = {**{k: v for k, v in a.items() if k != "options"}, **_prefixed(a)}
    flat_b = {**{k: v for k, v in b.items() if k != "options"}, **_prefixed(b)}
    differences = [
        f"{key}: {flat_a.get(key, 'absent')!r} recorded, {flat_b.get(key, 'absent')!r} given"
        for key in sorted(set(flat_a) | set(flat_b))
        if key not in flat_a or key not in flat_b or flat_a[key] != flat_b[key]
    ]
    return "; ".join(differences) or None


def check_recorded(
    recorded: EncoderInfo | dict[str, Any] | None,
    given: EncoderInfo | dict[str, Any] | None,
    where: Any,
) -> None:
    """Refuse vectors (pages to add, or queries) of encoder ``given`` for the index at
    ``where``, which recorded ``recorded`` (``is_compatible``); nothing to check when either
    is unknown (precomputed vectors)."""
    if not recorded or not given:
        return
    reason = is_compatible(recorded, given)
    if reason is not None:
        a = recorded.to_dict() if isinstance(recorded, EncoderInfo) else dict(recorded)
        b = given.to_dict() if isinstance(given, EncoderInfo) else dict(given)
        raise InputError(
            f"the index {where} was built with encoder {a['name_or_path']!r}, not "
            f"{b['name_or_path']!r}, which differs: {reason}; vectors of different encoders "
            "cannot share an index: use the recorded encoder (leave out --encoder), or index "
            "into a new folder"
        )


def _prefixed(record: dict[str, Any]) -> dict[str, Any]:
    return {f"options.{k}": v for k, v in (record.get("options") or {}).items()}


@dataclass(frozen=True)
class Page:
    """One document to encode: its text, its image (PIL image or encoded bytes), or both."""

    text: str | None = None
    image: Any = None


class Encoder(ABC):
    """Turns pages and queries into multi-vectors."""

    info: EncoderInfo
    #: What the encoder reads from a page: ``("text",)``, ``("image",)`` or both (either will do).
    reads: tuple[str, ...] = ("text", "image")

    def can_read(self, page: Page | str) -> str | None:
        """None when the encoder can read something in ``page``, else why not: a short phrase
        that completes "document N is ..." (``"empty text"``, ``"without an image"``).

        This decides which rows an ingest skips and reports (blank pages, image-only pages under
        a text encoder); a page that has content in the wrong shape (an undecodable image) is
        readable here and fails in ``encode_documents`` instead.
        """
        text = page.text if isinstance(page, Page) else page
        image = page.image if isinstance(page, Page) else None
        has_text = isinstance(text, str) and bool(text.strip())
        blank = "empty text" if isinstance(text, str) else "without text"
        if "text" in self.reads and "image" in self.reads:
            if has_text or image is not None:
                return None
            return (
                f"{blank} and without an image"
                if isinstance(text, str)
                else "without text or an image"
            )
        if "text" in self.reads:
            return None if has_text else blank
        return None if image is not None else "without an image"

    @property
    def dim(self) -> int:
        return self.info.dim

    @abstractmethod
    def encode_documents(
        self,
        documents: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        """Multi-vectors of the documents, in input order."""

    @abstractmethod
    def encode_queries(
        self,
        queries: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        """Multi-vectors of the queries, in input order."""


class MultiDeviceEncoder(Encoder):
    """One replica of an encoder per device (each visible GPU, say), used together.

    Every call splits its inputs into one contiguous share per replica and encodes the shares
    in parallel threads (torch releases the GIL inside its kernels); results come back in input
    order and equal what one replica alone returns.
    """

    def __init__(self, replicas: Sequence[Encoder]) -> None:
        if not replicas:
            raise ValueError("MultiDeviceEncoder needs at least one replica")
        first = replicas[0].info
        for replica in replicas[1:]:
            reason = is_compatible(first, replica.info)
            if reason is not None:
                raise InputError(f"every replica must be the same encoder: {reason}")
        self.replicas = list(replicas)
        self.info = first
        self.reads = replicas[0].reads

    def _map(self, method: str, items: Sequence[Any], **options: Any) -> MultiVectors:
        from concurrent.futures import ThreadPoolExecutor

        from index_store.errors import InputError

        shares = [s for s in np.array_split(np.arange(len(items)), len(self.replicas)) if s.size]

        def run(replica: Encoder, share: np.ndarray) -> MultiVectors:
            try:
                return getattr(replica, method)([items[i] for i in share], **options)
            except InputError as exc:  # renumber the bad item to its place in the whole call
                if exc.item is None:
                    raise
                raise InputError(str(exc), item=int(share[0]) + exc.item) from exc

        with ThreadPoolExecutor(len(shares) or 1) as pool:
            parts = list(pool.map(run, self.replicas, shares))
        return MultiVectors.from_arrays([p[i] for p in parts for i in range(len(p))], self.dim)

    def encode_documents(
        self,
        documents: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        return self._map("encode_documents", documents, batch_size=batch_size)

    def encode_queries(
        self,
        queries: Sequence[Page | str],
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> MultiVectors:
        return self._map("encode_queries", queries, batch_size=batch_size)
