"""Variational autoencoders of fixed-size particle configurations in a box.

Four models share :class:`ConfigurationVAE`'s interface and differ in what they see:

- :class:`CoordinateVAE` -- flattened coordinates (atoms sorted by x), MLP encoder/decoder;
- :class:`DistanceMatrixVAE` -- the distance matrix (atoms sorted by distance from the origin),
  convolutional encoder, decoder of a symmetric zero-diagonal matrix, coordinates by MDS;
- :class:`DensityGridVAE` -- a Gaussian-smeared occupancy grid, convolutional encoder/decoder;
- :class:`InvariantVAE` -- an encoder invariant to rotations, translations and permutations
  by construction, and a coordinate decoder scored on sorted pair distances.
"""

from equimol.models.vae._base import ConfigurationVAE, gaussian_kl, gaussian_nll
from equimol.models.vae.coordinate import CoordinateVAE
from equimol.models.vae.density_grid import DensityGridVAE, grid_peaks, occupancy_grid
from equimol.models.vae.distance_matrix import DistanceMatrixVAE
from equimol.models.vae.invariant import InvariantVAE

__all__ = [
    "ConfigurationVAE",
    "CoordinateVAE",
    "DistanceMatrixVAE",
    "DensityGridVAE",
    "InvariantVAE",
    "gaussian_kl",
    "gaussian_nll",
    "occupancy_grid",
    "grid_peaks",
]
