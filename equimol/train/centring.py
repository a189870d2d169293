"""Start a potential at the mean of its training energies.

``set_statistics`` sets a model's per-species energy shifts from the reference energies of the
training data, which assumes that the untrained network adds nothing on average. A freshly
initialised network does add a constant of order ``scale`` per atom: for the equivariant
network, whose scale is the force RMS, that is often many times the spread of the energies
per atom (on a toy 2D system, -0.55 eV/atom against a spread of 0.07 eV/atom), and a short run
cannot remove it. :func:`centre_energies` measures the untrained model's energies of the
training structures, fits the mean residual per element (least squares on the element counts,
as the reference energies are fitted) and hands the model the corrected reference energies: it
then starts where the mean predictor is, whatever its architecture.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from equimol import _keys as K
from equimol.data import DatasetStatistics

__all__ = ["centre_energies", "model_energies"]

logger = logging.getLogger(__name__)


def model_energies(model: torch.nn.Module, graphs: Sequence[Data], batch_size: int = 256) -> np.ndarray:
    """Energies ``[M]`` eV of ``graphs`` (no forces), in float64, on the model's device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    with torch.no_grad():
        for batch in DataLoader(list(graphs), batch_size=batch_size, shuffle=False):
            out.append(model(batch.to(device), compute_forces=False)[K.ENERGY].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def centre_energies(
    model: torch.nn.Module, graphs: Sequence[Data], statistics: DatasetStatistics
) -> DatasetStatistics:
    """Give ``model`` the statistics of its training data so that it starts at their mean energy.

    Args:
        model: a potential with ``set_statistics`` (called twice: with ``statistics``, then with
            the corrected reference energies).
        graphs: training structures with ``energy [1]`` eV labels (a sample of the training set
            suffices: the correction is a mean).
        statistics: the statistics of the training set (``compute_statistics``).

    Returns:
        The statistics given to the model the second time (``statistics`` when it has no
        reference energies or ``graphs`` no energy labels, after the first call only).

    Raises:
        ValueError: the untrained model's energies of ``graphs`` are not finite.
    """
    model.set_statistics(statistics)
    graphs = [graph for graph in graphs if getattr(graph, K.ENERGY, None) is not None]
    if not statistics.reference_energies or not graphs:
        return statistics
    species = sorted(statistics.reference_energies)
    counts = np.array([[int((g[K.ATOMIC_NUMBERS] == z).sum()) for z in species] for g in graphs], dtype=np.float64)
    labels = np.array([float(g[K.ENERGY].reshape(-1)[0]) for g in graphs])
    residual = labels - model_energies(model, graphs)
    if not np.isfinite(residual).all():
        raise ValueError("the untrained model predicts non-finite energies on the training structures")
    offsets, *_ = np.linalg.lstsq(counts, residual, rcond=None)
    references = {z: statistics.reference_energies[z] + float(offsets[k]) for k, z in enumerate(species)}
    centred = dataclasses.replace(statistics, reference_energies=references)
    model.set_statistics(centred)
    logger.info("untrained model centred on the training energies: mean offset %.4g eV per structure",
                float(residual.mean()))
    return centred
