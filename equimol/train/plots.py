"""Figures of a training run and of an evaluation: parity plots, error histograms, a
committee's uncertainty against its error, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "new_figure",
    "parity_figure",
    "error_histogram_figure",
    "uncertainty_figure",
    "loss_curve_figure",
    "figure_to_array",
    "save_figure",
]

_UNITS = {"energy_per_atom": "eV/atom", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"}
_TITLES = {"energy_per_atom": "energy per atom", "energy": "energy", "forces": "force components",
           "stress": "stress components"}


def _panel_row(data: Mapping[str, np.ndarray], height: float) -> tuple[Figure, list, list[str]]:
    """A figure with one panel per quantity of ``data`` that has values: the figure, the axes
    (one per such quantity, or one for the "no labelled data" message) and their names."""
    names = [name for name in data if len(data[name])]
    fig = new_figure(figsize=(4.2 * max(len(names), 1), height))
    axes = list(fig.subplots(1, max(len(names), 1), squeeze=False)[0])
    return fig, axes, names


def _finish_panel_row(fig: Figure, axes: list, names: list[str], title: str) -> Figure:
    """The message of an empty figure, the title and the layout of a :func:`_panel_row`."""
    if not names:
        axes[0].text(0.5, 0.5, "no labelled data", ha="center", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def parity_figure(
    pairs: Mapping[str, np.ndarray], title: str = "", errors: Mapping[str, tuple[float, float]] | None = None
) -> Figure:
    """Predicted against true values, one panel per quantity.

    Args:
        pairs: quantity name (``energy_per_atom``, ``forces``...) -> array ``[M, 2]``,
            column 0 predicted, column 1 true.
        title: figure title (for example ``"val, epoch 12"``).
        errors: quantity name -> ``(MAE, RMSE)`` to show in its panel's title, for pairs that
            are a sample of the data (default: those of ``pairs``).
    """
    fig, axes, names = _panel_row(pairs, 4.0)
    for ax, name in zip(axes, names):
        values = np.asarray(pairs[name], dtype=np.float64)
        predicted, true = values[:, 0], values[:, 1]
        low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        pad = 0.05 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", lw=1)
        ax.scatter(true, predicted, s=6, alpha=0.6, edgecolors="none")
        mae, rmse = (errors or {}).get(name) or (float(np.abs(predicted - true).mean()),
                                                  float(np.sqrt(((predicted - true) ** 2).mean())))
        unit = _UNITS.get(name, "")
        ax.set_title(f"{_TITLES.get(name, name)}\nMAE {mae:.3g}, RMSE {rmse:.3g} {unit}")
        ax.set_xlabel(f"true ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_aspect("equal", adjustable="datalim")
    return _finish_panel_row(fig, axes, names, title)


def error_histogram_figure(errors: Mapping[str, np.ndarray], title: str = "", bins: int = 60) -> Figure:
    """Histograms of errors (predicted minus true), one panel per quantity, counts on a log
    scale (the tails are what matters).

    Args:
        errors: quantity name (``energy_per_atom``, ``forces``, ``stress``) -> errors ``[M]``
            in the quantity's unit (eV/atom, eV/Å, eV/Å³).
        title: figure title.
        bins: bins per histogram.
    """
    fig, axes, names = _panel_row(errors, 3.6)
    for ax, name in zip(axes, names):
        values = np.asarray(errors[name], dtype=np.float64).reshape(-1)
        unit = _UNITS.get(name, "")
        ax.hist(values, bins=bins, color="C0", alpha=0.8)
        ax.axvline(0.0, color="0.4", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{_TITLES.get(name, name)}\nmean {values.mean():.3g}, std {values.std():.3g} {unit}")
        ax.set_xlabel(f"predicted - true ({unit})")
        ax.set_ylabel("count")
    return _finish_panel_row(fig, axes, names, title)


def uncertainty_figure(
    pairs: Mapping[str, np.ndarray], correlations: Mapping[str, float | None] | None = None, title: str = ""
) -> Figure:
    """A committee's predicted uncertainty against its actual error, one panel per quantity,
    both axes logarithmic (a well ranked uncertainty rises with the error).

    Args:
        pairs: quantity name (``energy_per_atom``, ``forces``) -> ``[M, 2]`` per structure,
            column 0 the uncertainty (standard deviation over the members), column 1 the
            error, both in the quantity's unit.
        correlations: quantity name -> Spearman rank correlation, shown in the panel's title.
        title: figure title.
    """
    fig, axes, names = _panel_row(pairs, 4.0)
    for ax, name in zip(axes, names):
        values = np.asarray(pairs[name], dtype=np.float64)
        values = values[(values > 0).all(axis=1)]  # a zero has no place on a log axis
        unit = _UNITS.get(name, "")
        ax.scatter(values[:, 0], values[:, 1], s=6, alpha=0.6, edgecolors="none")
        if len(values):
            low, high = float(values.min()), float(values.max())
            ax.plot([low, high], [low, high], color="0.6", lw=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
        rho = (correlations or {}).get(name)
        label = _TITLES.get(name, name).replace(" components", "")
        ax.set_title(f"{label}\nSpearman {'n/a' if rho is None else format(rho, '.3f')}")
        ax.set_xlabel(f"committee std ({unit})")
        ax.set_ylabel(f"error ({unit})")
    return _finish_panel_row(fig, axes, names, title)


def loss_curve_figure(history: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
    """Loss against epoch on a log scale, one line per series (``train/loss``, ``val/loss``...).

    Args:
        history: series name -> list of ``(epoch, value)``.
    """
    fig = new_figure(figsize=(5.5, 4.0))
    ax = fig.subplots()
    for name, points in history.items():
        if points:
            epochs, values = zip(*points)
            ax.plot(epochs, values, marker="o", ms=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as an ``[H, W, 3]`` uint8 RGB image (for ``logger.log_image``)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (creating folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def new_figure(figsize: tuple[float, float] | None = None) -> Figure:
    """A figure drawn by the Agg canvas, outside pyplot: it never touches the user's backend
    (a notebook's inline plots keep working) and needs no closing."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig
