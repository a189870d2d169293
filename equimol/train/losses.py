"""Training losses of a potential: weighted energy-per-atom, force and stress terms.

The energy term compares energies per atom (eV/atom), so structures of different sizes weigh
alike; the force term compares force components (eV/Å); the stress term compares the nine
stress components (eV/Å³). Each term is a mean squared error or a Huber loss.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
from torch import nn
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.models.base import fully_periodic

__all__ = ["PotentialLoss", "atoms_per_structure"]


def atoms_per_structure(batch: Data) -> torch.Tensor:
    """``[B]`` float: the number of atoms of each structure of a batch (or of one ``Data``)."""
    index = getattr(batch, K.BATCH, None)
    if index is None:
        return torch.full((1,), float(batch.pos.shape[0]), device=batch.pos.device)
    counts = torch.bincount(index, minlength=int(batch.num_graphs))
    return counts.to(batch.pos.dtype)


class PotentialLoss(nn.Module):
    """``w_E * L(E/N) + w_F * L(F) + w_S * L(sigma)``, with ``L`` an MSE or a Huber loss.

    Args:
        energy_weight: weight of the energy-per-atom term (its unit: (eV/atom)^2 for MSE).
        forces_weight: weight of the force term ((eV/Å)^2 for MSE). 0 trains on energies only.
        stress_weight: weight of the stress term ((eV/Å³)^2 for MSE).
        kind: ``"mse"`` or ``"huber"``.
        huber_delta: the Huber loss's switch from quadratic to linear, in the unit of each term.

    A term with weight 0 is skipped; a term with a positive weight whose label is missing from
    the batch raises a ``KeyError`` naming the label.
    """

    def __init__(
        self,
        energy_weight: float = 1.0,
        forces_weight: float = 10.0,
        stress_weight: float = 0.0,
        kind: Literal["mse", "huber"] = "mse",
        huber_delta: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value in (("energy_weight", energy_weight), ("forces_weight", forces_weight),
                            ("stress_weight", stress_weight)):
            if value < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {value}")
        if kind not in ("mse", "huber"):
            raise ValueError(f"loss kind must be 'mse' or 'huber', got {kind!r}")
        if energy_weight == forces_weight == stress_weight == 0:
            raise ValueError("all loss weights are 0: nothing to train on")
        self.weights = {K.ENERGY: float(energy_weight), K.FORCES: float(forces_weight),
                        K.STRESS: float(stress_weight)}
        self.kind = kind
        self.huber_delta = float(huber_delta)

    def needs(self, key: str) -> bool:
        """Whether the term of ``key`` (``energy``, ``forces``, ``stress``) has a positive weight."""
        return self.weights[key] > 0

    def _error(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return nn.functional.mse_loss(prediction, target)
        return nn.functional.huber_loss(prediction, target, delta=self.huber_delta)

    def forward(self, prediction: Mapping[str, torch.Tensor], batch: Data) -> dict[str, torch.Tensor]:
        """The loss terms and their weighted sum.

        Args:
            prediction: model output, ``energy [B]`` eV and, as needed, ``forces [N, 3]`` eV/Å
                and ``stress [B, 3, 3]`` eV/Å³.
            batch: the batch with the labels of the weighted terms.

        Returns:
            dict with ``loss`` (the weighted sum, a scalar) and the unweighted terms
            ``energy_per_atom``, ``forces``, ``stress`` that were computed.
        """
        terms: dict[str, torch.Tensor] = {}
        total = prediction[K.ENERGY].new_zeros(())
        for key in K.LABEL_KEYS:
            weight = self.weights[key]
            if weight == 0:
                continue
            target = getattr(batch, key, None)
            if target is None:
                raise KeyError(
                    f"the loss weight of {key!r} is {weight} but the batch has no {key!r} labels; "
                    f"set {key}_weight: 0 or use data with {key}"
                )
            if key not in prediction:
                raise KeyError(f"the loss needs {key!r} but the model returned only {sorted(prediction)}")
            predicted = prediction[key]
            if key == K.ENERGY:
                n_atoms = atoms_per_structure(batch)
                predicted, target = predicted / n_atoms, target.reshape(-1) / n_atoms
                name = "energy_per_atom"
            elif key == K.STRESS:
                # only cells periodic along all three axes have a stress (the model returns
                # zeros for the others, which must not be compared with their labels)
                periodic = fully_periodic(batch)
                if not bool(periodic.any()):
                    continue
                predicted, target = predicted[periodic], target.reshape(predicted.shape)[periodic]
                name = key
            else:
                target = target.reshape(predicted.shape)
                name = key
            term = self._error(predicted, target)
            terms[name] = term
            total = total + weight * term
        terms["loss"] = total
        return terms
