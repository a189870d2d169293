"""Learning curves: how the test error falls with the number of training structures.

Given errors ``[n_sizes, n_seeds]`` at training-set sizes ``[n_sizes]`` (one column per seed of
weights, batch order and subset), :func:`fit_power_law` fits ``error ~ a * n**slope`` by least
squares on ``log(error)`` against ``log(n)`` and gives the spread of the slope over the seeds;
:func:`samples_to_target` interpolates, in log-log, the number of training structures at which
the error reaches a target. :func:`learning_curve_fit_figure` draws the curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from equimol.train.plots import new_figure

__all__ = [
    "log_geometric_mean",
    "PowerLawFit",
    "fit_power_law",
    "samples_to_target",
    "cost_at_size",
    "learning_curve_arrays",
    "learning_curve_fit_figure",
]


@dataclass(frozen=True)
class PowerLawFit:
    """``error ≈ 10**intercept * n**slope``, fitted in log10-log10.

    Attributes:
        slope: the least-squares slope of ``log error`` against ``log n`` over every
            (size, seed) point (negative: the error falls with more data).
        intercept: ``log10`` of the error at ``n = 1`` of that line.
        slope_std: standard deviation over the seeds of the slopes fitted to each seed's
            curve alone (NaN with fewer than two seeds).
        slope_stderr: standard error of ``slope`` from the residuals of the fit (NaN with
            fewer than three points).
        seed_slopes: the slope of each seed's curve, in the order of the columns.
        n_points: the (size, seed) points used (finite, positive errors only).
    """

    slope: float
    intercept: float
    slope_std: float
    slope_stderr: float
    seed_slopes: tuple[float, ...] = field(default_factory=tuple)
    n_points: int = 0

    def predict(self, sizes: np.ndarray | Sequence[float]) -> np.ndarray:
        """The fitted error at ``sizes``."""
        return 10.0 ** (self.intercept + self.slope * np.log10(np.asarray(sizes, dtype=float)))


def _as_grid(sizes: Sequence[float], errors: np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(sizes, dtype=float)
    e = np.asarray(errors, dtype=float)
    if e.ndim == 1:
        e = e[:, None]
    if n.ndim != 1 or e.ndim != 2 or e.shape[0] != n.shape[0]:
        raise ValueError(f"errors must be [n_sizes, n_seeds] with n_sizes = {n.shape}, got shape {e.shape}")
    if np.any(n <= 0):
        raise ValueError(f"training-set sizes must be positive, got {n.tolist()}")
    return n, e


def log_geometric_mean(values: np.ndarray | Sequence) -> np.ndarray:
    """``log10`` of the geometric mean over seeds, per size: values ``[n_sizes, n_seeds]`` (or
    ``[n_sizes]``) -> ``[n_sizes]``. Entries that are NaN, infinite or not positive are left
    out; a size with none left is NaN. The one rule every curve table, fit and figure uses."""
    v = np.asarray(values, dtype=float)
    v = v[:, None] if v.ndim == 1 else v
    usable = np.isfinite(v) & (v > 0)
    logs = np.log10(np.where(usable, v, 1.0))
    counts = usable.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (logs * usable).sum(axis=1) / counts, np.nan)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, intercept and standard error of the slope of ``y ≈ slope x + intercept``."""
    design = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    stderr = math.nan
    if len(x) > 2 and np.ptp(x) > 0:
        residual = y - (slope * x + intercept)
        stderr = float(np.sqrt(residual @ residual / (len(x) - 2) / np.sum((x - x.mean()) ** 2)))
    return float(slope), float(intercept), stderr


def fit_power_law(sizes: Sequence[float], errors: np.ndarray | Sequence) -> PowerLawFit:
    """Fit ``error ≈ a * n**slope`` to a learning curve.

    Args:
        sizes: training-set sizes ``[n_sizes]`` (structures).
        errors: test errors ``[n_sizes, n_seeds]`` (or ``[n_sizes]`` for one seed), any
            positive unit (eV², eV...); NaN, infinite or non-positive entries are left out.

    Returns:
        The fit over all points, with the spread of the per-seed slopes.

    Raises:
        ValueError: shapes that do not match, or fewer than two distinct sizes with
            usable errors.
    """
    n, e = _as_grid(sizes, errors)
    usable = np.isfinite(e) & (e > 0)
    x = np.broadcast_to(np.log10(n)[:, None], e.shape)[usable]
    y = np.log10(e[usable])
    if len(np.unique(x)) < 2:
        raise ValueError(f"a learning curve needs errors at two or more sizes, got sizes {n[usable.any(1)].tolist()}")
    slope, intercept, stderr = _line(x, y)
    seed_slopes = []
    for column in range(e.shape[1]):
        keep = usable[:, column]
        if len(np.unique(n[keep])) >= 2:
            seed_slopes.append(_line(np.log10(n[keep]), np.log10(e[keep, column]))[0])
    spread = float(np.std(seed_slopes, ddof=1)) if len(seed_slopes) > 1 else math.nan
    return PowerLawFit(slope, intercept, spread, stderr, tuple(seed_slopes), int(usable.sum()))


def samples_to_target(sizes: Sequence[float], errors: np.ndarray | Sequence, target: float) -> float:
    """Training structures needed to reach ``target``, interpolated in log-log.

    The curve is the geometric mean over the seeds at each size (the mean of ``log error``).
    The answer is the smallest ``n`` on the piecewise-linear curve (in ``log n``,
    ``log error``) through those points at which the error is at most ``target``: the first
    size if it already reaches it (the data cannot say whether fewer would do), ``inf``
    when no size within the curve reaches it. Nothing is extrapolated.

    Args:
        sizes: training-set sizes ``[n_sizes]``, increasing.
        errors: errors ``[n_sizes, n_seeds]`` or ``[n_sizes]``, positive.
        target: the error to reach, in the unit of ``errors``, positive.

    Returns:
        The number of structures (a float: an interpolated size), or ``math.inf``.
    """
    if not target > 0:
        raise ValueError(f"the target error must be positive, got {target!r}")
    n, e = _as_grid(sizes, errors)
    if np.any(np.diff(n) <= 0):
        raise ValueError(f"sizes must increase, got {n.tolist()}")
    curve = log_geometric_mean(e)
    keep = np.isfinite(curve)
    n, curve = n[keep], curve[keep]
    log_n, log_target = np.log10(n), math.log10(target)
    log_target += 1e-12  # a target taken from one of these points is reached there, round-off aside
    for k in range(len(curve)):
        if curve[k] <= log_target:
            if k == 0:
                return float(n[0])
            fraction = (curve[k - 1] - log_target) / (curve[k - 1] - curve[k])
            return float(10.0 ** (log_n[k - 1] + fraction * (log_n[k] - log_n[k - 1])))
    return math.inf


def cost_at_size(sizes: Sequence[float], costs: np.ndarray | Sequence, n: float) -> float:
    """The cost (e.g. training seconds) of a run on ``n`` structures, from the costs measured at
    ``sizes``: the geometric mean over seeds at each size, interpolated linearly in log-log;
    below the first size, that size's cost. NaN when ``n`` is not finite or beyond the sizes.

    Args:
        sizes: training-set sizes ``[n_sizes]``, increasing.
        costs: costs ``[n_sizes, n_seeds]`` or ``[n_sizes]``, positive.
        n: the number of structures (e.g. from :func:`samples_to_target`).
    """
    sizes_, c = _as_grid(sizes, costs)
    if not math.isfinite(n) or n > sizes_[-1]:
        return math.nan
    mean = log_geometric_mean(c)
    keep = np.isfinite(mean)
    if not keep.any():
        return math.nan
    return float(10.0 ** np.interp(math.log10(max(n, sizes_[keep][0])), np.log10(sizes_[keep]), mean[keep]))


def learning_curve_arrays(
    rows: Sequence[Mapping[str, object]], model: str, column: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sizes ``[n_sizes]`` and errors ``[n_sizes, n_seeds]`` of one model from the study's rows
    (keys ``model``, ``n_train``, ``seed`` and ``column``); missing entries are NaN."""
    mine = [row for row in rows if row["model"] == model]
    sizes = sorted({int(row["n_train"]) for row in mine})
    seeds = sorted({int(row.get("seed", 0)) for row in mine})
    errors = np.full((len(sizes), len(seeds)), np.nan)
    for row in mine:
        errors[sizes.index(int(row["n_train"])), seeds.index(int(row.get("seed", 0)))] = float(row[column])
    return np.asarray(sizes, dtype=float), errors


def learning_curve_fit_figure(
    curves: Mapping[str, tuple[Sequence[float], np.ndarray]],
    *,
    ylabel: str = "test energy MSE (eV²)",
    target: float | None = None,
) -> Figure:
    """Learning curves in log-log: geometric mean over seeds with error bars (the spread of
    ``log error`` over the seeds, one standard deviation), the fitted power laws as lines,
    and their slopes (± spread over seeds) in the legend; ``target`` as a dotted line.

    Args:
        curves: label -> (sizes ``[n_sizes]``, errors ``[n_sizes, n_seeds]``).
        ylabel: the y-axis label (the unit of the errors).
        target: an error to mark, or None.
    """
    fig = new_figure(figsize=(9.0, 4.2))
    ax = fig.subplots()
    all_sizes: set[float] = set()
    colours = [f"C{k % 10}" for k in range(len(curves))]
    for colour, (label, (sizes, errors)) in zip(colours, curves.items()):
        n, e = _as_grid(sizes, errors)
        all_sizes.update(n.tolist())
        with np.errstate(divide="ignore", invalid="ignore"):
            log_e = np.log10(np.where(np.isfinite(e) & (e > 0), e, np.nan))
        mean = log_geometric_mean(e)
        spread = np.array([np.nanstd(row) if np.isfinite(row).sum() > 1 else 0.0 for row in log_e])
        centre = 10.0**mean
        ax.errorbar(n, centre, yerr=[centre - 10.0 ** (mean - spread), 10.0 ** (mean + spread) - centre],
                    fmt="o", ms=4, capsize=3, color=colour)
        try:
            fit = fit_power_law(n, e)
        except ValueError:
            ax.plot([], [], "o", color=colour, label=label)
            continue
        text = f"{label}: slope {fit.slope:.2f}" + (f" ± {fit.slope_std:.2f}" if math.isfinite(fit.slope_std) else "")
        line = np.geomspace(n.min(), n.max(), 50)
        ax.plot(line, fit.predict(line), color=colour, lw=1.2, label=text)
    if target is not None:
        ax.axhline(target, color="k", ls=":", lw=1.0, label=f"target {target:.2g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted(all_sizes)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("training structures")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
