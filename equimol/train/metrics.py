"""Error metrics of a potential: MAE and RMSE of energies, forces and stress, R² of energies.

Built on torchmetrics, so the sums are accumulated over an epoch and reduced across
processes under DDP before the final value is computed.

=====================  ========  =====================================================
name                   unit      compares
=====================  ========  =====================================================
``energy_per_atom_*``  eV/atom   energy divided by the number of atoms of the structure
``energy_*``           eV        total energy of the structure
``forces_*``           eV/Å      each Cartesian force component of each atom
``stress_*``           eV/Å³     each of the nine stress components of each structure
=====================  ========  =====================================================

with ``*`` one of ``mae``, ``rmse`` and, for the two energies, ``r2``.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch_geometric.data import Data
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric

from equimol import _keys as K
from equimol.models.base import fully_periodic
from equimol.train.losses import atoms_per_structure

__all__ = ["PotentialMetrics", "CoefficientOfDetermination", "QUANTITIES"]

QUANTITIES = ("energy_per_atom", "energy", "forces", "stress")


def _collection(with_r2: bool) -> nn.ModuleDict:
    metrics: dict[str, Metric] = {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)}
    if with_r2:
        metrics["r2"] = CoefficientOfDetermination()
    return nn.ModuleDict(metrics)


class CoefficientOfDetermination(Metric):
    """R² = 1 - RSS / TSS over everything seen, accumulated in float64 (summed across DDP ranks).

    torchmetrics' ``R2Score`` reports exactly 1.0 whenever the residual sum of squares is below
    1e-4 in absolute terms, which is the normal size of errors of energies per atom in eV; this
    metric has no such threshold.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("sum_target", "sum_target_squared", "residual", "count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add predictions and targets of any shape (flattened)."""
        preds, target = preds.detach().double().reshape(-1), target.double().reshape(-1)
        self.sum_target += target.sum()
        self.sum_target_squared += target.square().sum()
        self.residual += (preds - target).square().sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        """R²; ``-inf`` or NaN when the targets have no spread."""
        total = self.sum_target_squared - self.sum_target.square() / self.count
        return 1.0 - self.residual / total


class PotentialMetrics(nn.Module):
    """MAE, RMSE (and R² for energies) of every quantity that has both a label and a prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.quantities = nn.ModuleDict(
            {name: _collection(with_r2=name.startswith("energy")) for name in QUANTITIES}
        )

    def update(self, prediction: Mapping[str, torch.Tensor], batch: Data) -> list[str]:
        """Accumulate one batch; returns the names of the quantities that were updated.

        Args:
            prediction: ``energy [B]`` eV, optionally ``forces [N, 3]`` eV/Å, ``stress [B, 3, 3]`` eV/Å³.
            batch: labels ``energy [B]``, optionally ``forces``, ``stress``.
        """
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        target_energy = getattr(batch, K.ENERGY, None)
        if target_energy is not None and K.ENERGY in prediction:
            energy, target = prediction[K.ENERGY].detach().reshape(-1), target_energy.reshape(-1)
            n_atoms = atoms_per_structure(batch)
            pairs["energy"] = (energy, target)
            pairs["energy_per_atom"] = (energy / n_atoms, target / n_atoms)
        for key in (K.FORCES, K.STRESS):
            target = getattr(batch, key, None)
            if target is not None and key in prediction:
                predicted = prediction[key].detach()
                if key == K.STRESS:  # only fully periodic cells have a stress
                    periodic = fully_periodic(batch)
                    if not bool(periodic.any()):
                        continue
                    predicted, target = predicted[periodic], target.reshape(predicted.shape)[periodic]
                pairs[key] = (predicted.reshape(-1), target.reshape(-1))
        for name, (predicted, target) in pairs.items():
            for metric in self.quantities[name].values():
                metric.update(predicted.to(target.dtype), target)
        return list(pairs)

    def metrics_of(self, quantities: list[str]) -> dict[str, Metric]:
        """The metric objects of ``quantities`` by name (``forces_mae``...), for ``LightningModule.log``."""
        return {
            f"{name}_{kind}": metric
            for name in quantities
            for kind, metric in self.quantities[name].items()
        }

    def compute(self) -> dict[str, float]:
        """Values of every metric that saw data (as plain floats)."""
        values = {}
        for name, collection in self.quantities.items():
            for kind, metric in collection.items():
                if metric.update_count > 0:
                    values[f"{name}_{kind}"] = float(metric.compute())
        return values

    def reset(self) -> None:
        for collection in self.quantities.values():
            for metric in collection.values():
                metric.reset()
