"""``latemm.ranking.fusion`` kernels: bounds of fused scores with a field of weight 0, and per-query
(``auto``) weights."""

from __future__ import annotations

import numpy as np

from latemm.ranking import fusion


def test_a_field_of_weight_zero_leaves_the_bounds_finite_and_tight() -> None:
    """Weighted fusion with a zero-weight field whose scores are only known within a bound
    (its min-max scale unknown: inf bounds) must not turn the fused bounds into NaN."""
    rng = np.random.default_rng(0)
    ids = np.array([[f"d{i}" for i in range(6)]], dtype=object)
    known = rng.standard_normal(ids.shape)
    unsure = rng.standard_normal(ids.shape)
    lows, highs = [known, unsure - 5.0], [known, unsure + 5.0]
    low, high = fusion.fuse_bounds("weighted", lows, highs, ids, [1.0, 0.0])
    want = fusion.weighted([known, unsure], ids, [1.0, 0.0])
    np.testing.assert_allclose(low, want)
    np.testing.assert_allclose(high, want)


def test_agreement_weights_count_shared_pages_of_the_top_lists() -> None:
    a = np.array([["x", "y", "z", None], ["p", "q", "r", "s"]], dtype=object)
    b = np.array([["z", "y", "w", "v"], ["t", "u", None, None]], dtype=object)
    c = np.array([["n1", "n2", "n3", "n4"], ["n5", "n6", "n7", "n8"]], dtype=object)
    got = fusion.agreement_weights([a, b, c], [1.0, 2.0, 1.0], depth=3)
    np.testing.assert_allclose(got[0], [(2 + 1) / 4, 1 / 4])  # y, z shared with b
    np.testing.assert_allclose(got[1], [2 * (2 + 1) / 4, 2 * 1 / 4])
    np.testing.assert_allclose(got[2], [1 / 4, 1 / 4])  # agrees with nothing
    alone = fusion.agreement_weights([a], [0.5], depth=3)
    np.testing.assert_allclose(alone[0], [0.5, 0.5])
