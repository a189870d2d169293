"""A VAE whose latent vector is invariant to rotations, translations and permutations."""

from __future__ import annotations

import torch
from torch import nn

from equimol.data.geometry import pairwise_distances
from equimol.models._mlp import mlp
from equimol.models.vae._base import ConfigurationVAE, gaussian_nll
from equimol.nn import GaussianBasis, PolynomialCutoff

__all__ = ["InvariantVAE"]


class InvariantVAE(ConfigurationVAE):
    """Encoder invariant by construction; decoder of coordinates scored by an invariant loss.

    **Encoder.** Only pair distances enter. Each pair ``(i, j)`` is embedded by a Gaussian
    radial basis times a smooth polynomial cutoff (:class:`equimol.nn.GaussianBasis`,
    :class:`equimol.nn.PolynomialCutoff`); atom features start as the sum of the embeddings
    over neighbours, and ``n_interactions`` continuous-filter convolutions
    (``h_i <- h_i + MLP(sum_j W(e_ij) * h_j)``, as in SchNet) let each atom see its
    neighbours' environments. The atom features are averaged over atoms (DeepSets pooling) and
    an MLP gives ``(mu, logvar)``. Distances do not change under rotations, reflections and
    translations, and sums over atoms do not depend on their order, so the latent posterior is
    invariant to all three to round-off: that is a property of the architecture, not something
    learned.

    **Decoder.** An MLP gives ``N * dim`` coordinates (units of L). The reconstruction is
    scored by the Gaussian NLL (standard deviation ``sigma``, units of L) between the *sorted*
    pair distances of the decoded and of the input configuration
    (:func:`equimol.data.geometry.pairwise_distances` with ``sort=True``). That loss is
    invariant to the same transformations, so the decoder is free to place the configuration
    in any orientation and labelling; the decoded configuration matches the input up to a
    rigid motion and a relabelling, and
    :meth:`to_positions` returns it centred on the box centre. The price: absolute height
    under gravity is not represented -- only what the pair-distance statistics carry about it.

    Args:
        n_atoms, box_length, dim, latent_dim: see :class:`ConfigurationVAE`.
        cutoff: radial cutoff (Å) of the neighbour embedding.
        num_basis: number of Gaussians in the radial basis.
        features: width of the atom features.
        n_interactions: number of continuous-filter convolutions.
        hidden: widths of the decoder's hidden layers.
        sigma: decoder standard deviation, in units of the box length.
    """

    def __init__(
        self,
        n_atoms: int,
        box_length: float,
        dim: int = 2,
        latent_dim: int = 8,
        cutoff: float = 3.0,
        num_basis: int = 16,
        features: int = 64,
        n_interactions: int = 2,
        hidden: tuple[int, ...] = (128, 128),
        sigma: float = 0.05,
    ) -> None:
        super().__init__(n_atoms, box_length, dim, latent_dim)
        self.sigma = float(sigma)
        self.basis = GaussianBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.embed = mlp(num_basis, [features], features)
        self.filters = nn.ModuleList(mlp(num_basis, [features], features) for _ in range(n_interactions))
        self.updates = nn.ModuleList(mlp(features, [features], features) for _ in range(n_interactions))
        self.encoder = mlp(features, [features], 2 * latent_dim)
        self.decoder = mlp(latent_dim, hidden, n_atoms * dim)
        self.register_buffer("_offdiag", 1.0 - torch.eye(n_atoms), persistent=False)

    def pair_embedding(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, N, N, num_basis]: radial basis times envelope, zero on the diagonal."""
        r = pairwise_distances(self.check_positions(pos))
        e = self.basis(r) * self.envelope(r).unsqueeze(-1)
        return e * self._offdiag.unsqueeze(-1)

    def atom_features(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, N, features]: invariant features of each atom's environment."""
        e = self.pair_embedding(pos)
        h = self.embed(e.sum(2))
        for filt, update in zip(self.filters, self.updates):
            w = filt(e)  # [B, N, N, F]
            h = h + update((w * h.unsqueeze(1)).sum(2))
        return h

    def represent(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, features]: the mean of the atom features (the pooled, invariant representation)."""
        return self.atom_features(pos).mean(1)

    def target(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, N (N - 1) / 2] sorted pair distances / L."""
        return pairwise_distances(self.check_positions(pos) / self.box_length, sort=True)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, N, dim] coordinates in units of L (arbitrary frame)."""
        return self.decoder(z).view(-1, self.n_atoms, self.dim)

    def reconstruction_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return gaussian_nll(pairwise_distances(recon, sort=True), target, self.sigma)

    def to_positions(self, recon: torch.Tensor) -> torch.Tensor:
        x = recon * self.box_length
        x = x - x.mean(1, keepdim=True) + 0.5 * self.box_length
        return self._pad3(x)
