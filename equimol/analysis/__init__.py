"""Analysis of configurations and of generative models: geometry and latent spaces."""

from equimol.analysis.geometry import (
    augment_batch,
    classical_mds,
    coordinates_from_distances,
    kabsch,
    kabsch_align,
    pairwise_distances,
    random_rotations,
    rmsd,
)

__all__ = [
    "pairwise_distances",
    "classical_mds",
    "kabsch",
    "kabsch_align",
    "rmsd",
    "coordinates_from_distances",
    "random_rotations",
    "augment_batch",
]
