"""A VAE on flattened coordinates: the naive baseline."""

from __future__ import annotations

from typing import Literal

import torch

from equimol.models._mlp import mlp
from equimol.models.vae._base import ConfigurationVAE, gaussian_nll

__all__ = ["CoordinateVAE"]


class CoordinateVAE(ConfigurationVAE):
    """MLP encoder and Gaussian decoder on the flattened coordinates.

    The input is ``pos / L - 1/2`` (so the box is ``[-1/2, 1/2]^dim``), with the atoms sorted
    by their x coordinate (``order="x"``) or left in the given order (``order="none"``), then
    flattened to ``N * dim`` numbers. Sorting makes the model blind to the labelling of the atoms
    but not to rotations; without it, a permutation of the input is a different configuration,
    and a model trained on arbitrarily ordered atoms learns the average position of "atom i",
    which is the middle of the box.

    The decoder outputs the ``N * dim`` normalised coordinates; the reconstruction loss is the
    Gaussian negative log-likelihood with standard deviation ``sigma`` (in units of L), summed
    over coordinates.

    Args:
        n_atoms, box_length, dim, latent_dim: see :class:`ConfigurationVAE`.
        hidden: widths of the hidden layers (encoder; the decoder uses them reversed).
        order: ``"x"`` (sort atoms by x) or ``"none"``.
        sigma: decoder standard deviation, in units of the box length.
    """

    def __init__(
        self,
        n_atoms: int,
        box_length: float,
        dim: int = 2,
        latent_dim: int = 8,
        hidden: tuple[int, ...] = (128, 128),
        order: Literal["x", "none"] = "x",
        sigma: float = 0.05,
    ) -> None:
        super().__init__(n_atoms, box_length, dim, latent_dim)
        if order not in ("x", "none"):
            raise ValueError(f"CoordinateVAE: order must be 'x' or 'none', got {order!r}")
        self.order = order
        self.sigma = float(sigma)
        n_in = self.n_atoms * self.dim
        self.encoder = mlp(n_in, hidden, 2 * latent_dim)
        self.decoder = mlp(latent_dim, reversed(hidden), n_in)

    ordered_output = True
    absolute_frame = True

    def canonical_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """``pos [B, N, 3]`` with the atoms in the model's order (by x, or as given)."""
        self.check_positions(pos)
        if self.order == "none":
            return pos
        return self._atoms_sorted_by(pos, pos[..., 0])

    def represent(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, N * dim] flattened normalised coordinates."""
        x = self.canonical_positions(pos)[..., : self.dim] / self.box_length - 0.5
        return x.flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, N * dim] normalised coordinates."""
        return self.decoder(z)

    def reconstruction_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return gaussian_nll(recon, target, self.sigma)

    def to_positions(self, recon: torch.Tensor) -> torch.Tensor:
        x = (recon.view(-1, self.n_atoms, self.dim) + 0.5) * self.box_length
        return self._pad3(x)
