"""Ridge regression on hand-made features, fitted in closed form.

The energy is linear in the features, ``E = w . x + b``, so forces ``-w . dx/dpos`` come
from autograd through the featurizer. On inverse distances this model is exact for any
pairwise sum of Coulomb-like terms ``sum_{i<j} q_ij / r_ij`` of a fixed-size system.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.models._featurized import FeaturizedPotential

__all__ = ["LinearModel"]


class LinearModel(FeaturizedPotential):
    """``E = w . x + b`` on a featurizer's output, fitted by :meth:`fit` (no gradient training).

    Args:
        n_atoms: N, the number of atoms of every structure.
        featurizer: a featurizer name (default ``"inverse_distances"``).
        ridge: strength of the penalty on the weights of the standardised features,
            relative to the mean squared error (see :meth:`fit`); dimensionless.
        featurizer_kwargs: arguments of the featurizer.
    """

    def __init__(
        self,
        n_atoms: int,
        featurizer: str = "inverse_distances",
        ridge: float = 1e-8,
        featurizer_kwargs: dict | None = None,
    ) -> None:
        super().__init__(n_atoms, featurizer, featurizer_kwargs)
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        self.ridge = float(ridge)
        self.weight = nn.Parameter(torch.zeros(self.num_features))
        self.bias = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def fit(self, data: Data | Iterable[Data]) -> "LinearModel":
        """Ridge regression on the energies of ``data``, in closed form and float64.

        With centred energies ``y`` and features standardised to zero mean and unit spread,
        ``X``, over the M structures, it minimises ``|X w - y|^2 / M + ridge |w|^2``, that is
        ``(X^T X / M + ridge I) w = X^T y / M``, solved as the equivalent stacked
        least-squares problem ``[X; sqrt(M ridge) I] w = [y; 0]`` (better conditioned than
        the normal equations). The penalty is thus independent of the units of the features
        and of the size of the data set; the bias is not penalised. Features that do not
        vary get weight zero. The weights are then mapped back to the raw features.

        Args:
            data: structures with ``energy`` labels (``Data``/``Batch``, list or loader).

        Returns:
            self, fitted.
        """
        x, y = self.collect_features(data, with_energy=True)
        n_samples, n_features = x.shape
        x_mean, y_mean = x.mean(0), y.mean()
        x_std = x.std(0, unbiased=False)
        varies = x_std > 1e-12 * x.abs().amax(0).clamp_min(1e-300)
        x_std = torch.where(varies, x_std, torch.ones_like(x_std))
        xs = (x - x_mean) / x_std * varies
        ys = y - y_mean
        if self.ridge > 0:
            penalty = torch.eye(n_features, dtype=x.dtype, device=x.device) * (n_samples * self.ridge) ** 0.5
            xs = torch.cat([xs, penalty])
            ys = torch.cat([ys, torch.zeros(n_features, dtype=y.dtype, device=y.device)])
        w = torch.linalg.lstsq(xs, ys[:, None], driver="gelsd").solution[:, 0] * varies / x_std
        self.weight.copy_(w.to(self.weight.dtype))
        self.bias.copy_((y_mean - x_mean @ w).to(self.bias.dtype))
        return self

    def energy(self, data: Data, pos: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        """``energy [B]`` eV of structures of ``n_atoms`` atoms at ``pos [N_total, 3]`` Å."""
        x = self.features(data, pos)
        return {K.ENERGY: x @ self.weight.to(x.dtype) + self.bias.to(x.dtype)}
