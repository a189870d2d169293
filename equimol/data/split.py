"""Seeded train/validation/test splits of a data set's frame indices."""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

__all__ = ["split_indices"]


def split_indices(
    n: int, fractions_or_sizes: Sequence[float] | Sequence[int], seed: int
) -> tuple[np.ndarray, ...]:
    """Split ``range(n)`` into disjoint random subsets that together cover it.

    Args:
        n: number of frames.
        fractions_or_sizes: either fractions that sum to 1, such as ``(0.8, 0.1, 0.1)``,
            or integer sizes that sum to ``n``, such as ``(500, 50, 50)``. Fractions are
            turned into sizes by the largest-remainder rule, so sizes sum to ``n``.
        seed: seed of the permutation; the same seed gives the same split.

    Returns:
        One sorted int64 index array per entry of ``fractions_or_sizes``.

    Raises:
        ValueError: fractions that do not sum to 1, sizes that do not sum to ``n``,
            a negative entry, or a split that would be empty.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    parts = list(fractions_or_sizes)
    if not parts:
        raise ValueError("fractions_or_sizes is empty; give at least one fraction or size")
    if any(isinstance(p, bool) or not isinstance(p, numbers.Real) for p in parts):
        raise ValueError(f"fractions_or_sizes must be numbers, got {parts!r}")
    if any(p < 0 for p in parts):
        raise ValueError(f"fractions_or_sizes must not be negative, got {parts!r}")

    if all(isinstance(p, numbers.Integral) for p in parts):
        sizes = [int(p) for p in parts]
        if sum(sizes) != n:
            raise ValueError(
                f"split sizes {sizes} sum to {sum(sizes)}, but the data set has {n} frames; "
                "sizes must add up to the number of frames (or give fractions)"
            )
    else:
        fractions = np.asarray(parts, dtype=np.float64)
        if abs(fractions.sum() - 1.0) > 1e-6:
            raise ValueError(f"split fractions {parts} sum to {fractions.sum():.6g}, not 1")
        exact = fractions / fractions.sum() * n
        sizes = np.floor(exact).astype(int)
        remainder = n - int(sizes.sum())
        order = np.argsort(-(exact - sizes), kind="stable")
        sizes[order[:remainder]] += 1
        sizes = sizes.tolist()

    empty = [k for k, size in enumerate(sizes) if size == 0]
    if empty:
        raise ValueError(
            f"split {empty} would be empty: {n} frames split as {sizes} "
            f"(from {parts}); use more frames or larger fractions"
        )
    permutation = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0] + sizes)
    return tuple(
        np.sort(permutation[a:b]).astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    )
