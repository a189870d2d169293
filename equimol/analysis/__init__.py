"""Analysis of trained generative models: latent spaces, reconstructions, physical validity.

The geometry these functions build on (pairwise distances, classical MDS, Kabsch alignment,
RMSD) lives in :mod:`equimol.data.geometry`, where models and data code can use it too.
"""

from equimol.analysis import latent

__all__ = ["latent"]
