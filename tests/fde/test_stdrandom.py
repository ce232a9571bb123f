"""The libstdc++ stream reproductions, including the paths the FDE grid rarely reaches."""

from __future__ import annotations

import numpy as np

from fde._stdrandom import index_sign_pairs, normal_float32, raw_stream


def test_raw_stream_is_std_mt19937() -> None:
    # The C++ standard fixes the 10000th output of a default-seeded mt19937 (seed 5489).
    assert int(raw_stream(5489, 10000)[-1]) == 4123659995


def _naive_pairs(seed: int, n: int, buckets: int) -> tuple[list[int], list[float]]:
    """One draw at a time, exactly as libstdc++'s loops consume them."""
    raw = iter(int(v) for v in raw_stream(seed, 10 * n + 100))
    threshold = (2**32 - buckets) % buckets
    out_b, out_s = [], []
    for _ in range(n):
        while True:
            product = next(raw) * buckets
            if (product & 0xFFFFFFFF) >= threshold:
                break
        out_b.append(product >> 32)
        r0, r1 = float(next(raw)), float(next(raw))
        canonical = min((r0 + r1 * 2.0**32) / 2.0**64, np.nextafter(1.0, 0.0))
        out_s.append(1.0 if canonical < 0.5 else -1.0)
    return out_b, out_s


def test_index_sign_pairs_handles_lemire_rejections() -> None:
    # With 2**31 + 1 buckets about half of the bucket draws are rejected and redrawn.
    buckets, signs = index_sign_pairs(11, 500, 2**31 + 1)
    expected_b, expected_s = _naive_pairs(11, 500, 2**31 + 1)
    np.testing.assert_array_equal(buckets, expected_b)
    np.testing.assert_array_equal(signs, expected_s)


def test_index_sign_pairs_small_ranges() -> None:
    for buckets in (1, 3, 16, 1000):
        got_b, got_s = index_sign_pairs(2, 300, buckets)
        want_b, want_s = _naive_pairs(2, 300, buckets)
        np.testing.assert_array_equal(got_b, want_b)
        np.testing.assert_array_equal(got_s, want_s)


def test_normal_float32_moments_and_determinism() -> None:
    draws = normal_float32(1, 200_000)
    assert draws.dtype == np.float32
    assert abs(float(draws.mean())) < 0.01
    assert abs(float(draws.std()) - 1.0) < 0.01
    # A prefix of a longer stream is the shorter stream (the polar pairs are consumed in order).
    np.testing.assert_array_equal(normal_float32(1, 999), draws[:999])
