"""A VAE on the distance matrix, with a convolutional encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equimol.data.geometry import classical_mds, pairwise_distances
from equimol.models._mlp import mlp
from equimol.models.vae._base import ConfigurationVAE, gaussian_nll

__all__ = ["DistanceMatrixVAE"]


class DistanceMatrixVAE(ConfigurationVAE):
    """2D convolutions on the ``N x N`` distance matrix; the decoder returns a distance matrix.

    The atoms are ordered by their distance from the origin (a corner of the box), so the
    matrix does not depend on the labelling of the atoms; the distances themselves do not
    depend on rotations or translations, but the ordering does, so the representation is only
    approximately invariant to those. Distances are divided by ``L``.

    The decoder (an MLP) outputs ``N x N`` numbers that are symmetrised, made positive with a
    softplus, and multiplied by an off-diagonal mask, so a decoded matrix is symmetric with an
    exactly zero diagonal. The reconstruction loss is a Gaussian NLL with standard deviation
    ``sigma`` (units of L) over the ``N (N - 1) / 2`` distinct entries. Coordinates are
    recovered by classical multidimensional scaling (:func:`equimol.data.geometry.classical_mds`);
    they are centred on the box centre, in an arbitrary orientation.

    Args:
        n_atoms, box_length, dim, latent_dim: see :class:`ConfigurationVAE`.
        channels: output channels of the two stride-2 convolutions.
        hidden: width of the hidden layers of the encoder head and of the decoder.
        sigma: decoder standard deviation, in units of the box length.
    """

    def __init__(
        self,
        n_atoms: int,
        box_length: float,
        dim: int = 2,
        latent_dim: int = 8,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 256,
        sigma: float = 0.05,
    ) -> None:
        super().__init__(n_atoms, box_length, dim, latent_dim)
        self.sigma = float(sigma)
        c1, c2 = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            mlp(16 * c2, [hidden], 2 * latent_dim),
        )
        self.decoder = mlp(latent_dim, [hidden, hidden], n_atoms * n_atoms)
        self.register_buffer("_offdiag", 1.0 - torch.eye(n_atoms), persistent=False)
        iu = torch.triu_indices(n_atoms, n_atoms, offset=1)
        self.register_buffer("_triu", iu, persistent=False)

    ordered_output = True
    absolute_frame = False

    def canonical_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """``pos [B, N, 3]`` with the atoms ordered by distance from the origin."""
        x = self.check_positions(pos)
        return self._atoms_sorted_by(pos, (x * x).sum(-1))

    def distance_matrix(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, N, N] distances / L, atoms ordered by distance from the origin."""
        x = self.canonical_positions(pos)[..., : self.dim] / self.box_length
        return pairwise_distances(x)

    def represent(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, 1, N, N]: the distance matrix as a one-channel image."""
        return self.distance_matrix(pos).unsqueeze(1)

    def target(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, N, N]."""
        return self.distance_matrix(pos)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, N, N] symmetric, non-negative, zero-diagonal distances / L."""
        a = self.decoder(z).view(-1, self.n_atoms, self.n_atoms)
        a = 0.5 * (a + a.transpose(-1, -2))
        return F.softplus(a) * self._offdiag

    def reconstruction_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        i, j = self._triu
        return gaussian_nll(recon[:, i, j], target[:, i, j], self.sigma)

    def to_positions(self, recon: torch.Tensor) -> torch.Tensor:
        """Classical MDS of the decoded matrix, centred on the box centre."""
        x = classical_mds(recon * self.box_length, self.dim) + 0.5 * self.box_length
        return self._pad3(x)
