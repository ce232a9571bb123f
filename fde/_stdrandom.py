"""Bit-exact reproductions of the libstdc++ random streams the MUVERA reference uses.

The reference FDE (google/graph-mining, ``fixed_dimensional_encoding.cc``) draws its random
matrices from ``std::mt19937`` through libstdc++'s ``normal_distribution<float>``,
``uniform_int_distribution`` and ``bernoulli_distribution``. This module reproduces those
streams with numpy so that our FDEs equal the reference's. Pure numpy; no I/O.

``np.random.MT19937`` with its legacy 32-bit seeding yields exactly ``std::mt19937``'s raw
stream; the distributions on top are re-derived from libstdc++'s source:

- ``generate_canonical<float, 24>``: one draw, ``float(raw) / 2**32`` (the conversion to float
  rounds), clamped below 1.
- ``normal_distribution<float>``: Marsaglia's polar method on those uniforms; each accepted pair
  returns ``y * m`` first and caches ``x * m`` for the next call.
- ``uniform_int_distribution`` on a 32-bit engine: Lemire's nearly-divisionless method,
  ``(raw * range) >> 32``, redrawing while the low word is below ``2**32 % range``.
- ``bernoulli_distribution(0.5)``: ``generate_canonical<double, 53>`` (two draws,
  ``(r0 + r1 * 2**32) / 2**64`` in double) compared with 0.5.
"""

from __future__ import annotations

import numpy as np

_TWO32 = 4294967296.0


def raw_stream(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of ``std::mt19937(seed)`` as uint64, shape (n,)."""
    bit_generator = np.random.MT19937()
    bit_generator._legacy_seeding(int(seed) % 2**32)
    return bit_generator.random_raw(n).astype(np.uint64)


def normal_float32(seed: int, n: int) -> np.ndarray:
    """The first ``n`` draws of ``std::normal_distribution<float>(0, 1)`` over ``mt19937(seed)``.

    Returns a float32 array of shape (n,).
    """
    pairs_needed = (n + 1) // 2
    # The polar method accepts pi/4 of pairs; draw generously and top up if unlucky.
    budget = int(pairs_needed * 1.35) + 16
    while True:
        raw = raw_stream(seed, 2 * budget)
        u = raw.astype(np.float32) / np.float32(_TWO32)  # rounds like float(raw)
        u = np.minimum(u, np.nextafter(np.float32(1), np.float32(0)))
        # float * float stays float; "- 1.0" is done in double, then stored as float.
        v = ((np.float32(2) * u).astype(np.float64) - 1.0).astype(np.float32)
        x, y = v[0::2], v[1::2]
        r2 = x * x + y * y  # float32 arithmetic, as in the reference
        accepted = np.flatnonzero((r2 <= 1.0) & (r2 != 0.0))
        if accepted.size >= pairs_needed:
            break
        budget *= 2
    idx = accepted[:pairs_needed]
    x, y, r2 = x[idx], y[idx], r2[idx]
    # logf is computed in double and rounded: glibc's logf is within 1 ulp of that.
    log_r2 = np.log(r2.astype(np.float64)).astype(np.float32)
    mult = np.sqrt(np.float32(-2) * log_r2 / r2)
    out = np.empty(2 * pairs_needed, dtype=np.float32)
    out[0::2] = y * mult
    out[1::2] = x * mult
    return out[:n]


def index_sign_pairs(seed: int, n: int, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (bucket, sign) pairs drawn alternately from ``mt19937(seed)``.

    Each pair is ``uniform_int_distribution(0, num_buckets - 1)`` followed by
    ``2 * bernoulli_distribution(0.5) - 1``, the loop body of the reference's AMS sketch and
    CountSketch. Returns ``(buckets, signs)``: int64 of shape (n,) and float32 of shape (n,).
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    threshold = (2**32 - num_buckets) % num_buckets
    buckets = np.empty(n, dtype=np.int64)
    signs = np.empty(n, dtype=np.float32)
    done = 0
    # Without rejections each pair costs 3 draws; a rejection (probability < range / 2**32)
    # shifts the rest of the stream by one draw, so decode in vectorised runs between them.
    raw = raw_stream(seed, 3 * n + 64)
    pos = 0
    while done < n:
        need = n - done
        if raw.size < pos + 3 * need:
            raw = raw_stream(seed, 2 * (pos + 3 * need) + 64)
        block = raw[pos : pos + 3 * need].reshape(need, 3)
        product = block[:, 0] * np.uint64(num_buckets)
        low = product & np.uint64(0xFFFFFFFF)
        rejected = np.flatnonzero(low < np.uint64(threshold))
        good = need if rejected.size == 0 else int(rejected[0])
        buckets[done : done + good] = (product[:good] >> np.uint64(32)).astype(np.int64)
        canonical = (
            block[:good, 1].astype(np.float64) + block[:good, 2].astype(np.float64) * _TWO32
        ) / (_TWO32 * _TWO32)
        canonical = np.minimum(canonical, np.nextafter(1.0, 0.0))
        signs[done : done + good] = np.where(canonical < 0.5, 1.0, -1.0)
        done += good
        pos += 3 * good
        if done < n:
            pos += 1  # the rejected draw; the next one retries the same bucket
            # Continue decoding from the retry: the pair starts at the new position.
    return buckets, signs
