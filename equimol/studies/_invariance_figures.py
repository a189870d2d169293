"""Figures of the invariance study (matplotlib figures drawn by the Agg canvas, PNG).

Each function returns a ``matplotlib.figure.Figure``; :func:`save` writes it at a modest
resolution so the PNGs stay small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from torch_geometric.data import Data

from equimol.train.plots import new_figure

__all__ = [
    "positions_figure",
    "energy_histogram_figure",
    "loss_curves_figure",
    "parity_figure",
    "error_bars_figure",
    "augmentation_cost_figure",
    "save",
]


def _subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """``pyplot.subplots`` on :func:`equimol.train.plots.new_figure`: the user's matplotlib
    backend (a notebook's inline plots) is never switched, and nothing needs closing."""
    fig = new_figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save(fig: Figure, path: Path, dpi: int = 90) -> Path:
    """Write ``fig`` as PNG to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def positions_figure(sets: Mapping[str, Sequence[Data]], max_structures: int = 100) -> Figure:
    """x-y positions of the first ``max_structures`` test structures of each set, coloured by
    atom index (a permutation shows up as swapped colours, a rotation as a turned cloud)."""
    names = list(sets)
    fig, axes = _subplots(1, len(names), figsize=(3.3 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        pos = np.stack([g.pos.double().numpy() for g in list(sets[name])[:max_structures]])  # [M, N, 3]
        n_atoms = pos.shape[1]
        colours = matplotlib.colormaps["tab10"](np.arange(n_atoms) % 10)
        for atom in range(n_atoms):
            ax.scatter(pos[:, atom, 0], pos[:, atom, 1], s=4, color=colours[atom], label=f"atom {atom}")
        ax.set_title(name)
        ax.set_xlabel("x (Å)")
        ax.set_aspect("equal", adjustable="datalim")
    axes[0, 0].set_ylabel("y (Å)")
    if n_atoms <= 10:
        axes[0, -1].legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def energy_histogram_figure(energies: Mapping[str, np.ndarray]) -> Figure:
    """Histograms of the energy labels (eV) of the training and test splits."""
    fig, ax = _subplots(figsize=(4.8, 3.4))
    values = np.concatenate([np.asarray(v) for v in energies.values()])
    bins = np.linspace(values.min(), values.max(), 40)
    for name, value in energies.items():
        ax.hist(value, bins=bins, alpha=0.6, label=f"{name} ({len(value)})")
    ax.set_xlabel("energy (eV)")
    ax.set_ylabel("structures")
    ax.legend()
    fig.tight_layout()
    return fig


def loss_curves_figure(histories: Mapping[str, Sequence[float]]) -> Figure:
    """Training loss against epoch (log scale), one line per model."""
    fig, ax = _subplots(figsize=(6.4, 4.0))
    for name, history in histories.items():
        if len(history):
            ax.plot(np.arange(1, len(history) + 1), history, label=name, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def parity_figure(
    true: np.ndarray, predictions: Mapping[str, Mapping[str, np.ndarray]], test_sets: Sequence[str]
) -> Figure:
    """Predicted against true energies, one panel per model, one colour per test set."""
    names = list(predictions)
    cols = min(4, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = _subplots(rows, cols, figsize=(2.9 * cols, 2.8 * rows), squeeze=False)
    low, high = float(true.min()), float(true.max())
    pad = 0.1 * (high - low or 1.0)
    for ax, name in zip(axes.flat, names):
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", lw=0.8)
        for test_set in test_sets:
            ax.scatter(true, predictions[name][test_set], s=3, alpha=0.6, label=test_set)
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - 3 * pad, high + 3 * pad)
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, markerscale=2)
    fig.supxlabel("true energy (eV)", fontsize=8)
    fig.supylabel("predicted energy (eV)", fontsize=8)
    fig.tight_layout()
    return fig


def error_bars_figure(mse: Mapping[str, Mapping[str, float]], test_sets: Sequence[str], floor: float = 1e-12) -> Figure:
    """Energy MSE (eV², log scale) per model (groups) and test set (bars)."""
    names = list(mse)
    width = 0.8 / len(test_sets)
    fig, ax = _subplots(figsize=(max(6.0, 0.75 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    for k, test_set in enumerate(test_sets):
        values = [max(mse[name][test_set], floor) for name in names]
        ax.bar(x + (k - (len(test_sets) - 1) / 2) * width, values, width, label=test_set)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("test energy MSE (eV²)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def augmentation_cost_figure(
    copies: Sequence[int], mse: Sequence[float], target: float, test_set: str, model: str
) -> Figure:
    """Energy MSE on ``test_set`` against the number of stacked copies, with the target."""
    fig, ax = _subplots(figsize=(4.8, 3.6))
    ax.plot(copies, mse, marker="o", label=model)
    ax.axhline(target, color="k", ls=":", label="target")
    ax.set_yscale("log")
    ax.set_xlabel("stacked transformed copies k")
    ax.set_ylabel(f"energy MSE on {test_set} (eV²)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
