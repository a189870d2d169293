"""A VAE on a smeared occupancy grid of the box."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from equimol.models.vae._base import ConfigurationVAE

__all__ = ["DensityGridVAE", "occupancy_grid", "grid_peaks"]


def occupancy_grid(
    pos: torch.Tensor, box_length: float, grid_size: int, width: float
) -> torch.Tensor:
    """Gaussian-smeared occupancy of the box on a regular grid.

    Each particle occupies ``g_i(r) = exp(-|r - r_i|^2 / (2 width^2))``; the occupancy is the
    probabilistic union ``1 - prod_i (1 - g_i(r))``, in [0, 1] whatever the number of particles.

    Args:
        pos: [B, N, dim] Å.
        box_length: L (Å); the grid covers ``[0, L]^dim`` with cell centres at ``(k + 1/2) L / G``.
        grid_size: G, cells per side.
        width: smearing width (Å).

    Returns:
        [B, G, G] (dim 2) or [B, G, G, G] (dim 3).
    """
    b, n, dim = pos.shape
    centres = (torch.arange(grid_size, dtype=pos.dtype, device=pos.device) + 0.5) * (
        box_length / grid_size
    )
    # The Gaussian factorises over axes: one [B, N, G] factor per axis, then an outer product.
    factors = torch.exp(-((centres - pos.unsqueeze(-1)) ** 2) / (2 * width**2))  # [B, N, dim, G]
    g = factors[:, :, 0]
    for axis in range(1, dim):
        g = g.unsqueeze(-1) * factors[:, :, axis].view(b, n, *([1] * axis), grid_size)
    return 1.0 - torch.prod(1.0 - g, dim=1)


def grid_peaks(grid: np.ndarray, n_peaks: int, box_length: float, min_separation: float) -> np.ndarray:
    """Positions of the ``n_peaks`` highest local maxima of an occupancy grid.

    Greedy non-maximum suppression: take the highest cell, refine its position along each
    axis by a parabola through the logarithms of the cell and its two neighbours (exact for a
    Gaussian peak), suppress every cell closer than ``min_separation``, repeat.

    Args:
        grid: [G, G] or [G, G, G] occupancies.
        n_peaks: number of particles to place.
        box_length: L (Å).
        min_separation: suppression radius (Å).

    Returns:
        [n_peaks, dim] positions (Å).
    """
    g = np.array(grid, dtype=np.float64)
    dim, size = g.ndim, g.shape[0]
    h = box_length / size
    centres = (np.arange(size) + 0.5) * h
    coords = np.stack(np.meshgrid(*([centres] * dim), indexing="ij"), axis=-1)  # [G.., dim]
    logg = np.log(np.clip(g, 1e-12, None))
    work = g.copy()
    out = np.empty((n_peaks, dim))
    for k in range(n_peaks):
        idx = np.unravel_index(int(np.argmax(work)), work.shape)
        out[k] = coords[idx]
        for axis in range(dim):
            i = idx[axis]
            if 0 < i < size - 1:
                lo, hi = list(idx), list(idx)
                lo[axis], hi[axis] = i - 1, i + 1
                a, b, c = logg[tuple(lo)], logg[idx], logg[tuple(hi)]
                curv = a - 2 * b + c
                if curv < 0:
                    out[k, axis] += h * float(np.clip(0.5 * (a - c) / curv, -0.5, 0.5))
        dist = np.linalg.norm(coords - out[k], axis=-1)
        work[dist < min_separation] = -np.inf
    return out


class DensityGridVAE(ConfigurationVAE):
    """Convolutions on a smeared occupancy grid of the box; the decoder returns the grid.

    The grid (:func:`occupancy_grid`) has ``grid_size`` cells per side whatever the number of
    particles, and does not depend on their labelling. The encoder is three stride-2
    convolutions (2D or 3D following ``dim``), the decoder three transposed convolutions back to
    the grid's logits, scored with the binary cross-entropy against the occupancy minus the
    occupancy's own entropy (the Bernoulli KL divergence per cell, summed over cells: the same
    gradients as the cross-entropy, and zero for a perfect reconstruction of a soft target).
    Decoded grids are turned into positions by picking the ``N`` highest peaks
    (:func:`grid_peaks`), in the box frame.

    Args:
        n_atoms, box_length, dim, latent_dim: see :class:`ConfigurationVAE`.
        grid_size: cells per side, a multiple of 8.
        width: smearing width (Å); a third to a half of the particle diameter works well.
        channels: output channels of the three convolutions.
    """

    def __init__(
        self,
        n_atoms: int,
        box_length: float,
        dim: int = 2,
        latent_dim: int = 8,
        grid_size: int = 32,
        width: float = 0.35,
        channels: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__(n_atoms, box_length, dim, latent_dim)
        if grid_size % 8:
            raise ValueError(f"DensityGridVAE: grid_size must be a multiple of 8, got {grid_size}")
        self.grid_size = int(grid_size)
        self.width = float(width)
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        deconv = nn.ConvTranspose2d if dim == 2 else nn.ConvTranspose3d
        c1, c2, c3 = channels
        self._bottom = (c3, *([grid_size // 8] * dim))
        n_flat = c3 * (grid_size // 8) ** dim
        self.encoder = nn.Sequential(
            conv(1, c1, 4, stride=2, padding=1),
            nn.SiLU(),
            conv(c1, c2, 4, stride=2, padding=1),
            nn.SiLU(),
            conv(c2, c3, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(n_flat, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, n_flat),
            nn.SiLU(),
            nn.Unflatten(1, self._bottom),
            deconv(c3, c2, 4, stride=2, padding=1),
            nn.SiLU(),
            deconv(c2, c1, 4, stride=2, padding=1),
            nn.SiLU(),
            deconv(c1, 1, 4, stride=2, padding=1),
        )

    ordered_output = False
    absolute_frame = True

    def grid(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, G, G(, G)] occupancy of ``pos [B, N, 3]``."""
        return occupancy_grid(self.check_positions(pos), self.box_length, self.grid_size, self.width)

    def represent(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, 1, G, G(, G)]."""
        return self.grid(pos).unsqueeze(1)

    def target(self, pos: torch.Tensor) -> torch.Tensor:
        return self.grid(pos)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, G, G(, G)] logits of the occupancy."""
        return self.decoder(z).squeeze(1)

    def reconstruction_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(recon, target, reduction="none")
        entropy = -(torch.xlogy(target, target) + torch.xlogy(1 - target, 1 - target))
        return (bce - entropy).flatten(1).sum(-1)

    def to_positions(self, recon: torch.Tensor) -> torch.Tensor:
        occ = torch.sigmoid(recon).detach().cpu().numpy()
        sep = 2.0 * self.width
        pos = np.stack([grid_peaks(o, self.n_atoms, self.box_length, sep) for o in occ])
        return self._pad3(torch.as_tensor(pos, dtype=recon.dtype, device=recon.device))
