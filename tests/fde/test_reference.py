"""The FDE equals Google's reference implementation (via muvfde) over a grid of configs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fde import FDEConfig, encode_documents, encode_queries
from fde.encode import _gray_to_binary
from fde.reference import reference_encode

pytest.importorskip("muvfde")

GRID = [
    FDEConfig(
        dimension=16,
        num_repetitions=3,
        num_simhash_projections=k,
        seed=seed,
        projection_type=kind,
        projection_dimension=5 if kind == "ams_sketch" else None,
        fill_empty_partitions=fill,
        final_projection_dimension=final,
    )
    for k, kind, fill, final, seed in itertools.product(
        range(7), ["identity", "ams_sketch"], [False, True], [None, 37], [1, 42, 20240517]
    )
]


def _assert_matches_reference(ours: np.ndarray, ref: np.ndarray) -> None:
    # Float tolerance only: partitions and filled points must be identical.
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def random_sets() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 48, size=40)
    return [rng.standard_normal((int(t), 16)).astype(np.float32) for t in lengths]


@pytest.mark.parametrize(
    "config",
    GRID,
    ids=lambda c: (
        f"k{c.num_simhash_projections}-{c.projection_type}-fill{int(c.fill_empty_partitions)}-final{c.final_projection_dimension}-s{c.seed}"
    ),
)
def test_documents_and_queries_equal_reference(
    config: FDEConfig, random_sets: list[np.ndarray]
) -> None:
    _assert_matches_reference(
        encode_documents(random_sets, config), reference_encode(random_sets, config, document=True)
    )
    # The reference refuses fill for queries; ours ignores it, so compare without it.
    query_config = FDEConfig(**{**config.to_dict(), "fill_empty_partitions": False})
    expected = reference_encode(random_sets, query_config, document=False)
    _assert_matches_reference(encode_queries(random_sets, config), expected)


@pytest.mark.parametrize("projection", [None, 16])
@pytest.mark.parametrize("final", [None, 2048])
def test_real_colbert_vectors_equal_reference(shared_data, projection, final) -> None:
    data = np.load(shared_data / "colbertv2-nanofiqa" / "documents.npz", allow_pickle=False)
    vectors, offsets = data["vectors"], data["offsets"]
    config = FDEConfig(
        dimension=128,
        num_repetitions=20,
        num_simhash_projections=5,
        seed=1,
        projection_type="ams_sketch" if projection else "identity",
        projection_dimension=projection,
        fill_empty_partitions=True,
        final_projection_dimension=final,
    )
    docs = [vectors[offsets[i] : offsets[i + 1]] for i in range(offsets.size - 1)]
    ours = encode_documents(vectors, config, offsets=offsets)
    _assert_matches_reference(ours, reference_encode(docs, config, document=True))
    queries = np.load(shared_data / "colbertv2-nanofiqa" / "queries.npz", allow_pickle=False)
    q_docs = [
        queries["vectors"][queries["offsets"][i] : queries["offsets"][i + 1]]
        for i in range(queries["offsets"].size - 1)
    ]
    query_config = FDEConfig(**{**config.to_dict(), "fill_empty_partitions": False})
    _assert_matches_reference(
        encode_queries(q_docs, config), reference_encode(q_docs, query_config, document=False)
    )


def test_gray_code_inverse_is_the_reference_loop() -> None:
    """Two popular ports use the Gray code itself (or its encoding) as the partition index.

    The reference appends bits as ``(i << 1) + (bit ^ (i & 1))``; replay that loop for every sign
    pattern of 8 bits and check the vectorised inverse, and that the wrong guesses differ.
    """
    import torch

    k = 8
    codes = np.arange(1 << k)
    expected = []
    for code in codes:
        index = 0
        for j in range(k):
            bit = (int(code) >> (k - 1 - j)) & 1
            index = (index << 1) + (bit ^ (index & 1))
        expected.append(index)
    ours = _gray_to_binary(torch.from_numpy(codes)).numpy()
    np.testing.assert_array_equal(ours, expected)
    assert not np.array_equal(codes, expected)
    assert not np.array_equal(codes ^ (codes >> 1), expected)


def test_fill_uses_hamming_nearest_point_with_lowest_index_on_ties() -> None:
    """Few points and many partitions: most cells are filled, so any slip in the distance
    (the partition's Gray code) or the tie-break shows up against the reference."""
    rng = np.random.default_rng(3)
    config = FDEConfig(
        dimension=8,
        num_repetitions=4,
        num_simhash_projections=6,
        seed=5,
        fill_empty_partitions=True,
    )
    sets = [rng.standard_normal((t, 8)).astype(np.float32) for t in (1, 2, 3, 5, 9)]
    # Duplicated points force exact ties in distance.
    sets.append(np.repeat(sets[2], 2, axis=0))
    _assert_matches_reference(
        encode_documents(sets, config), reference_encode(sets, config, document=True)
    )


@pytest.mark.parametrize("k", [7, 9])
def test_many_partitions_fill_and_long_sets_equal_reference(k: int) -> None:
    """Past the (2**k, 2**k) distance table (k > 6) empty cells are filled pair by pair, and
    past 8 bits sign codes are not packed into a byte; long sets sum raw vectors per cell before
    projecting, short ones project each vector first. Every branch must equal the reference."""
    rng = np.random.default_rng(k)
    config = FDEConfig(
        dimension=16,
        num_repetitions=2,
        num_simhash_projections=k,
        seed=11,
        projection_type="ams_sketch",
        projection_dimension=4,
        fill_empty_partitions=True,
    )
    long_sets = [rng.standard_normal((t, 16)).astype(np.float32) for t in (1100, 1300)]
    short_sets = [rng.standard_normal((t, 16)).astype(np.float32) for t in (1, 7, 30)]
    for sets in (long_sets, short_sets):
        _assert_matches_reference(
            encode_documents(sets, config), reference_encode(sets, config, document=True)
        )
