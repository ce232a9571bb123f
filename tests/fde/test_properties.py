"""Invariants of the FDE (hypothesis), input validation, and agreement with Chamfer similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fde.encode as fde_encode
from fde import FDEConfig, FDEInputError, encode_documents, encode_queries

configs = st.builds(
    lambda d, R, k, seed, ams, fill, final: FDEConfig(
        dimension=d,
        num_repetitions=R,
        num_simhash_projections=k,
        seed=seed,
        projection_type="ams_sketch" if ams else "identity",
        projection_dimension=ams,
        fill_empty_partitions=fill,
        final_projection_dimension=final,
    ),
    d=st.integers(1, 12),
    R=st.integers(1, 4),
    k=st.integers(0, 5),
    seed=st.integers(0, 10_000),
    ams=st.sampled_from([None, 3, 8]),
    fill=st.booleans(),
    final=st.sampled_from([None, 7, 64]),
)


@st.composite
def config_and_sets(draw):
    config = draw(configs)
    lengths = draw(st.lists(st.integers(1, 20), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return config, [rng.standard_normal((t, config.dimension)).astype(np.float32) for t in lengths]


@settings(max_examples=60, deadline=None)
@given(config_and_sets())
def test_shape_dtype_and_determinism(case) -> None:
    config, sets = case
    first = encode_documents(sets, config)
    assert first.shape == (len(sets), config.output_dimension)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, encode_documents(sets, config))
    assert encode_queries(sets, config).shape == first.shape


@settings(max_examples=60, deadline=None)
@given(config_and_sets(), st.randoms(use_true_random=False))
def test_token_order_does_not_matter(case, random) -> None:
    config, sets = case
    # Filling breaks Hamming-distance ties by point index, so order matters only there.
    config = FDEConfig(**{**config.to_dict(), "fill_empty_partitions": False})
    shuffled = []
    for vectors in sets:
        order = list(range(len(vectors)))
        random.shuffle(order)
        shuffled.append(vectors[order])
    np.testing.assert_allclose(
        encode_documents(shuffled, config), encode_documents(sets, config), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        encode_queries(shuffled, config), encode_queries(sets, config), rtol=1e-5, atol=1e-5
    )


@settings(max_examples=60, deadline=None)
@given(config_and_sets())
def test_query_fde_is_linear_over_set_union(case) -> None:
    config, sets = case
    if len(sets) < 2:
        return
    union = np.concatenate(sets[:2])
    parts = encode_queries(sets[:2], config)
    np.testing.assert_allclose(
        encode_queries([union], config)[0], parts[0] + parts[1], rtol=1e-4, atol=1e-4
    )
    # Positive scaling keeps every sign, so it scales the query FDE.
    np.testing.assert_allclose(
        encode_queries([2.5 * sets[0]], config)[0], 2.5 * parts[0], rtol=1e-4, atol=1e-4
    )


def test_batch_composition_and_chunking_do_not_change_a_document(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    config = FDEConfig(
        dimension=32,
        num_repetitions=5,
        num_simhash_projections=4,
        seed=3,
        projection_type="ams_sketch",
        projection_dimension=8,
        fill_empty_partitions=True,
    )
    sets = [rng.standard_normal((int(t), 32)).astype(np.float32) for t in rng.integers(1, 200, 50)]
    whole = encode_documents(sets, config)
    alone = np.stack([encode_documents([s], config)[0] for s in sets[:10]])
    np.testing.assert_allclose(alone, whole[:10], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(fde_encode, "_CHUNK_ELEMENTS", 5000)  # many small chunks
    monkeypatch.setattr(fde_encode, "_FILL_PAIRS", 7)  # many fill slices
    np.testing.assert_allclose(encode_documents(sets, config), whole, rtol=1e-5, atol=1e-6)


def test_flat_input_with_offsets_and_torch_tensors_agree() -> None:
    rng = np.random.default_rng(1)
    config = FDEConfig(dimension=8, num_repetitions=2, num_simhash_projections=3)
    sets = [rng.standard_normal((t, 8)).astype(np.float32) for t in (3, 1, 7)]
    offsets = np.array([0, 3, 4, 11])
    flat = np.concatenate(sets)
    expected = encode_documents(sets, config)
    np.testing.assert_array_equal(encode_documents(flat, config, offsets=offsets), expected)
    np.testing.assert_array_equal(
        encode_documents([torch.from_numpy(s) for s in sets], config, device="cpu"), expected
    )
    # float64 and float16 inputs are accepted and cast.
    for dtype in (np.float64, np.float16):
        cast = encode_documents([s.astype(dtype) for s in sets], config)
        np.testing.assert_allclose(cast, expected, atol=1e-2)


@pytest.mark.parametrize(
    ("sets", "offsets", "message"),
    [
        (
            [np.zeros((3, 5), np.float32)],
            None,
            "document 0 has vectors of dimension 5; the FDEConfig expects dimension=8",
        ),
        (
            [np.ones((2, 8), np.float32), np.zeros((0, 8), np.float32)],
            None,
            "document 1 has no vectors",
        ),
        (
            [np.ones((2, 8), np.int64)],
            None,
            "document 0 has dtype int64; expected float16, float32 or float64",
        ),
        ([np.ones(8, np.float32)], None, "document 0 has shape (8,); expected (num_vectors, 8)"),
        (
            np.ones((4, 8), np.float32),
            np.array([0, 2, 3]),
            "offsets must start at 0 and end at the number of vectors (4)",
        ),
        (np.ones((4, 8), np.float32), None, "pass offsets="),
        (np.ones((4, 8), np.float32), np.array([0, 3, 2, 4]), "offsets decrease at document 1"),
    ],
)
def test_bad_input_names_the_document(sets, offsets, message) -> None:
    config = FDEConfig(dimension=8)
    with pytest.raises(FDEInputError) as err:
        encode_documents(sets, config, offsets=offsets)
    assert message in str(err.value)


def test_non_finite_values_name_document_and_vector() -> None:
    sets = [np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)]
    sets[1][2, 1] = np.nan
    with pytest.raises(FDEInputError, match=r"query 1 contains NaN or inf \(vector 2\)"):
        encode_queries(sets, FDEConfig(dimension=4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_simhash_projections": 31}, "num_simhash_projections must be an int in [0, 30]"),
        ({"num_simhash_projections": -1}, "num_simhash_projections must be an int in [0, 30]"),
        ({"projection_type": "ams_sketch"}, "projection_dimension is required"),
        ({"projection_dimension": 4}, "only applies to projection_type='ams_sketch'"),
        ({"projection_type": "dense"}, "projection_type must be one of"),
        ({"num_repetitions": 0}, "num_repetitions must be a positive int"),
        ({"final_projection_dimension": 0}, "final_projection_dimension must be a positive int"),
        ({"seed": -1}, "seed must be in"),
    ],
)
def test_config_validation(kwargs, message) -> None:
    with pytest.raises(ValueError) as err:
        FDEConfig(dimension=8, **kwargs)
    assert message in str(err.value)


def test_config_round_trips_through_dict() -> None:
    config = FDEConfig(
        dimension=128,
        num_repetitions=20,
        num_simhash_projections=5,
        projection_type="ams_sketch",
        projection_dimension=16,
        fill_empty_partitions=True,
        final_projection_dimension=4096,
    )
    assert FDEConfig(**config.to_dict()) == config
    assert config.raw_dimension == 20 * 32 * 16
    assert config.output_dimension == 4096


def _chamfer(query: np.ndarray, doc: np.ndarray) -> float:
    return float((query @ doc.T).max(axis=1).sum())


def _correlation_with_chamfer(root, repetitions: int) -> tuple[float, float]:
    """Mean Pearson r between FDE and Chamfer scores, and the fraction of queries whose exact
    top document is in the FDE top 3."""
    from scipy.stats import pearsonr

    docs = np.load(root / "documents.npz", allow_pickle=False)
    queries = np.load(root / "queries.npz", allow_pickle=False)
    config = FDEConfig(
        dimension=128,
        num_repetitions=repetitions,
        num_simhash_projections=5,
        projection_type="ams_sketch",
        projection_dimension=16,
        fill_empty_partitions=True,
    )
    doc_fde = encode_documents(docs["vectors"], config, offsets=docs["offsets"])
    query_fde = encode_queries(queries["vectors"], config, offsets=queries["offsets"])
    d_off, q_off = docs["offsets"], queries["offsets"]
    correlations, hits = [], []
    for qi in range(q_off.size - 1):
        q = queries["vectors"][q_off[qi] : q_off[qi + 1]]
        exact = np.array(
            [_chamfer(q, docs["vectors"][d_off[i] : d_off[i + 1]]) for i in range(d_off.size - 1)]
        )
        approx = doc_fde @ query_fde[qi]
        correlations.append(pearsonr(approx, exact).statistic)
        hits.append(int(np.argmax(exact)) in np.argsort(-approx)[:3])
    return float(np.mean(correlations)), float(np.mean(hits))


def test_fde_inner_products_track_chamfer_on_real_vectors(shared_data) -> None:
    """On real ColBERTv2 vectors the FDE score follows exact Chamfer, better with more
    repetitions (the paper's claim), and finds each query's exact best document."""
    root = shared_data / "colbertv2-nanofiqa"
    one_rep, _ = _correlation_with_chamfer(root, 1)
    correlation, top3 = _correlation_with_chamfer(root, 20)
    assert correlation > 0.75
    assert correlation > one_rep + 0.2
    assert top3 == 1.0


@pytest.mark.parametrize("k", [3, 7])  # table fill, and the pairs fill of many partitions
def test_chunks_on_threads_and_float16_input_give_the_same_fdes(monkeypatch, k) -> None:
    from fde import as_flat, encode_flat

    rng = np.random.default_rng(4)
    config = FDEConfig(
        dimension=16,
        num_repetitions=3,
        num_simhash_projections=k,
        projection_type="ams_sketch",
        projection_dimension=4,
        fill_empty_partitions=True,
    )
    lengths = rng.integers(1, 300, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    half = rng.standard_normal((int(offsets[-1]), 16)).astype(np.float16)
    widened = half.astype(np.float32)
    monkeypatch.setattr(fde_encode, "_CHUNK_ELEMENTS", 20_000)  # several chunks
    one = encode_flat(widened, offsets, config, threads=1)
    np.testing.assert_array_equal(encode_flat(widened, offsets, config, threads=3), one)
    np.testing.assert_array_equal(encode_documents(half, config, offsets=offsets), one)
    flat, _ = as_flat(half, 16, offsets=offsets, keep_float16=True)
    assert flat is half  # kept as given, widened chunk by chunk
    assert as_flat(half, 16, offsets=offsets)[0].dtype == np.float32
    sets = [widened[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    np.testing.assert_allclose(encode_documents(sets[:5], config), one[:5], rtol=1e-5, atol=1e-6)


def test_float16_nan_and_inf_are_found_by_their_bits() -> None:
    values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = values[np.isfinite(values)]  # includes +-65504, the largest
    assert fde_encode.all_finite(finite.reshape(-1, 2))
    for value in values[~np.isfinite(values)]:  # every inf and NaN bit pattern
        assert not fde_encode.all_finite(np.append(finite[:7], value).reshape(2, 4))


@pytest.mark.parametrize("length", [3, 48, 300])
def test_projected_fdes_agree_whichever_is_summed_first(monkeypatch, length):
    """Short documents project every token then sum, long ones sum each cell then project
    (``_SUM_FIRST_TOKENS_PER_CELL``): both orders give the same FDE up to float32 rounding,
    filled empty partitions included."""
    config = FDEConfig(
        dimension=32,
        num_repetitions=3,
        num_simhash_projections=4,
        projection_type="ams_sketch",
        projection_dimension=8,
        fill_empty_partitions=True,
    )
    rng = np.random.default_rng(length)
    sets = [rng.standard_normal((length + i, 32)).astype(np.float32) for i in range(5)]
    got = {}
    for threshold in (0, 10**9):  # always sum first, never sum first
        monkeypatch.setattr(fde_encode, "_SUM_FIRST_TOKENS_PER_CELL", threshold)
        got[threshold] = encode_documents(sets, config)
    np.testing.assert_allclose(got[0], got[10**9], rtol=1e-5, atol=1e-5)
    assert np.abs(got[0]).max() > 0
