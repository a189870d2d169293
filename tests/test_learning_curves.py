"""Learning-curve fits: power-law slopes with their spread over seeds, and samples to a target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from equimol.studies._learning_curves import (
    log_geometric_mean,
    cost_at_size,
    fit_power_law,
    learning_curve_arrays,
    learning_curve_fit_figure,
    samples_to_target,
)

SIZES = np.array([25, 50, 100, 200, 400, 800], dtype=float)
SLOPE, PREFACTOR = -0.7, 3.0


def _power_law(sizes: np.ndarray, seeds: int, noise: float, rng_seed: int = 0) -> np.ndarray:
    """``PREFACTOR * n**SLOPE`` with log-normal noise of ``noise`` (in ln) per point: [n_sizes, seeds]."""
    rng = np.random.default_rng(rng_seed)
    clean = PREFACTOR * sizes**SLOPE
    return clean[:, None] * np.exp(noise * rng.standard_normal((len(sizes), seeds)))


def test_exact_power_law_gives_its_slope_and_samples() -> None:
    errors = _power_law(SIZES, seeds=3, noise=0.0)
    fit = fit_power_law(SIZES, errors)
    assert fit.slope == pytest.approx(SLOPE, abs=1e-12)
    assert 10**fit.intercept == pytest.approx(PREFACTOR, rel=1e-12)
    assert fit.slope_std == pytest.approx(0.0, abs=1e-12)
    assert fit.n_points == 18
    target = PREFACTOR * 300.0**SLOPE  # between the sizes 200 and 400
    assert samples_to_target(SIZES, errors, target) == pytest.approx(300.0, rel=1e-9)


def test_noisy_power_law_slope_and_its_spread_over_seeds() -> None:
    noise, seeds = 0.1, 8
    errors = _power_law(SIZES, seeds=seeds, noise=noise)
    fit = fit_power_law(SIZES, errors)
    x = np.log10(SIZES)
    # the least-squares slope of one seed has a standard deviation of (noise / ln 10) / sqrt(sum (x - mean)^2)
    expected_spread = noise / math.log(10) / math.sqrt(np.sum((x - x.mean()) ** 2))
    assert fit.slope == pytest.approx(SLOPE, abs=4 * expected_spread / math.sqrt(seeds))
    assert len(fit.seed_slopes) == seeds
    assert 0.4 * expected_spread < fit.slope_std < 2.0 * expected_spread
    assert fit.slope_stderr == pytest.approx(expected_spread / math.sqrt(seeds), rel=0.5)
    assert fit.predict([300.0])[0] == pytest.approx(PREFACTOR * 300.0**SLOPE, rel=0.1)


def test_samples_to_target_interpolates_and_never_extrapolates() -> None:
    errors = _power_law(SIZES, seeds=5, noise=0.05, rng_seed=1)
    needed = samples_to_target(SIZES, errors, PREFACTOR * 300.0**SLOPE)
    assert 200 < needed < 400 and needed == pytest.approx(300.0, rel=0.15)
    # a target the smallest size already reaches: the smallest size (no extrapolation downwards)
    assert samples_to_target(SIZES, errors, 10.0) == SIZES[0]
    # a target below every error: never reached within the sizes
    assert samples_to_target(SIZES, errors, PREFACTOR * 1e5**SLOPE) == math.inf
    # a curve that stops falling: the first crossing counts
    flat = np.array([1.0, 0.5, 0.6, 0.4])
    assert samples_to_target([10, 20, 40, 80], flat, 0.5) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="positive"):
        samples_to_target(SIZES, errors, 0.0)


def test_fit_rejects_bad_shapes_and_skips_unusable_points() -> None:
    with pytest.raises(ValueError, match="n_sizes"):
        fit_power_law(SIZES, np.ones((3, 2)))
    with pytest.raises(ValueError, match="two or more sizes"):
        fit_power_law([10, 20], [1.0, np.nan])
    errors = _power_law(SIZES, seeds=2, noise=0.0)
    errors[0, 0] = np.nan
    errors[1, 1] = 0.0
    fit = fit_power_law(SIZES, errors)
    assert fit.n_points == 10 and fit.slope == pytest.approx(SLOPE, abs=1e-12)


def test_rows_of_the_study_become_arrays_and_a_figure() -> None:
    errors = _power_law(SIZES[:3], seeds=2, noise=0.1)
    rows = [{"model": "m", "n_train": int(n), "seed": seed, "mse_original": errors[k, j]}
            for k, n in enumerate(SIZES[:3]) for j, seed in enumerate((3, 7))]
    rows.append({"model": "other", "n_train": 5, "seed": 3, "mse_original": 1.0})
    sizes, grid = learning_curve_arrays(rows, "m", "mse_original")
    np.testing.assert_array_equal(sizes, SIZES[:3])
    np.testing.assert_array_equal(grid, errors)
    figure = learning_curve_fit_figure({"m": (sizes, grid)}, target=0.1)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    slope = fit_power_law(sizes, grid)
    assert labels[0].startswith(f"m: slope {slope.slope:.2f} ± ") and labels[1] == "target 0.1"


def test_cost_at_size_interpolates_in_log_log() -> None:
    sizes = [10, 100, 1000]
    seconds = np.array([[2.0, 8.0], [40.0, 40.0], [400.0, 400.0]])  # geometric means 4, 40, 400: cost ~ n
    assert cost_at_size(sizes, seconds, 10) == pytest.approx(4.0)
    assert cost_at_size(sizes, seconds, 300) == pytest.approx(120.0)
    assert cost_at_size(sizes, seconds, 3) == pytest.approx(4.0)  # below the first size: its cost
    assert math.isnan(cost_at_size(sizes, seconds, math.inf))
    assert math.isnan(cost_at_size(sizes, seconds, 2000))  # beyond the sizes: not measured


def test_geometric_mean_over_seeds_leaves_out_unusable_entries() -> None:
    values = np.array([[1e-2, 1e-4, np.nan], [4.0, 0.0, 1.0], [np.inf, -1.0, np.nan], [2.0, 8.0, 4.0]])
    logs = log_geometric_mean(values)
    assert logs[0] == pytest.approx(-3.0) and logs[1] == pytest.approx(math.log10(2.0))
    assert math.isnan(logs[2]) and logs[3] == pytest.approx(math.log10(4.0))
    assert log_geometric_mean(np.array([10.0, 100.0])) == pytest.approx([1.0, 2.0])  # one seed
