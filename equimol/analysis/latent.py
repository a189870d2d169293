"""What a trained configuration VAE has learned: its latent space, anomalies, and validity.

All functions take a :class:`~equimol.models.vae.ConfigurationVAE` and dense positions
``pos [M, N, 3]`` Å (or NumPy arrays of latent means, labels and scores) and return NumPy
arrays, floats or dicts of floats. Lengths are in the units of the configurations (sigma for
the Lennard-Jones data, stored as Å); energies in epsilon (stored as eV).

- Latent space: :func:`latent_means`, :func:`latent_pca`, :func:`plot_latent_pca`,
  :func:`cluster_scores` (k-means and Gaussian mixtures against the gamma labels, adjusted
  Rand index).
- Anomalies: :func:`negative_elbo` as the score, :func:`anomaly_auc` (ROC AUC),
  :func:`overlapping_configurations` (an out-of-distribution set made by pushing two atoms
  together).
- Reconstruction: :func:`distance_error` (sorted pair distances), :func:`reconstruction_rmsd`
  (with the alignment each model's decoder needs).
- Physics: :func:`lj_energies`, :func:`min_pair_distances`, :func:`physical_validity`.
- Symmetry: :func:`invariance_errors` (latent change under rotations, permutations and
  translations; reconstruction of rotated inputs).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.mixture import GaussianMixture

from equimol.data.geometry import (
    augment_batch,
    classical_mds,
    kabsch_align,
    pairwise_distances,
    random_rotation,
    rmsd,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from equimol.models.vae import ConfigurationVAE

__all__ = [
    "latent_means",
    "negative_elbo",
    "latent_pca",
    "plot_latent_pca",
    "cluster_scores",
    "anomaly_auc",
    "overlapping_configurations",
    "distance_error",
    "matched_rmsd",
    "reconstruction_rmsd",
    "lj_energies",
    "min_pair_distances",
    "physical_validity",
    "invariance_errors",
]


def _batches(pos: torch.Tensor, batch_size: int):
    for i in range(0, pos.shape[0], batch_size):
        yield pos[i : i + batch_size]


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def latent_means(model: ConfigurationVAE, pos: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Posterior means ``mu`` [M, k] of ``pos [M, N, 3]``."""
    model.eval()
    pos = torch.as_tensor(pos, dtype=_model_dtype(model))
    return torch.cat([model.encode(p)[0] for p in _batches(pos, batch_size)]).cpu().numpy()


@torch.no_grad()
def negative_elbo(model: ConfigurationVAE, pos: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Per-configuration negative ELBO (beta = 1, decoder fed the posterior mean) [M].

    Higher means less likely under the model: the anomaly score of :func:`anomaly_auc`.
    """
    model.eval()
    pos = torch.as_tensor(pos, dtype=_model_dtype(model))
    out = [model.elbo(p, beta=1.0, reduce=False)["loss"] for p in _batches(pos, batch_size)]
    return torch.cat(out).cpu().numpy()


def latent_pca(mu: np.ndarray, n_components: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the latent means: ``(coords [M, n_components],
    explained_variance_ratio [n_components])``."""
    n_components = min(n_components, mu.shape[1])
    pca = PCA(n_components=n_components, random_state=seed).fit(mu)
    return pca.transform(mu), pca.explained_variance_ratio_


def plot_latent_pca(
    mu: np.ndarray, labels: np.ndarray, title: str = "", ax=None, label_name: str = "gamma"
) -> Figure:
    """Scatter of the first two principal components of ``mu [M, k]``, coloured by ``labels [M]``."""
    import matplotlib.pyplot as plt

    coords, ratio = latent_pca(mu, 2)
    if coords.shape[1] < 2:
        coords = np.concatenate([coords, np.zeros_like(coords)], axis=1)
        ratio = np.append(ratio, 0.0)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
    else:
        fig = ax.figure
    for value in np.unique(labels):
        sel = labels == value
        ax.scatter(coords[sel, 0], coords[sel, 1], s=6, alpha=0.7, label=f"{label_name} = {value:g}")
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}%)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}%)")
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2)
    return fig


def cluster_scores(
    mu: np.ndarray, labels: np.ndarray, n_clusters: int | None = None, seed: int = 0
) -> dict[str, float]:
    """Adjusted Rand index of k-means and of a Gaussian mixture on ``mu [M, k]`` against ``labels [M]``.

    ``n_clusters`` defaults to the number of distinct labels. Returns
    ``{"kmeans_ari", "gmm_ari"}``: 1 for a perfect match, about 0 for chance.
    """
    labels = np.unique(np.asarray(labels), return_inverse=True)[1]  # any labels -> 0..K-1
    k = n_clusters or int(labels.max()) + 1
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(mu)
    gmm = GaussianMixture(n_components=k, n_init=3, random_state=seed, reg_covar=1e-4).fit(mu)
    return {
        "kmeans_ari": float(adjusted_rand_score(labels, km)),
        "gmm_ari": float(adjusted_rand_score(labels, gmm.predict(mu))),
    }


def anomaly_auc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """ROC AUC of telling out-of-distribution from in-distribution configurations by score
    (higher = more anomalous, e.g. :func:`negative_elbo`). 1 is perfect, 0.5 chance."""
    y = np.concatenate([np.zeros(len(scores_in)), np.ones(len(scores_out))])
    s = np.concatenate([scores_in, scores_out]).astype(np.float64)
    return float(roc_auc_score(y, np.nan_to_num(s, nan=np.inf, posinf=1e300, neginf=-1e300)))


def overlapping_configurations(
    pos: torch.Tensor, dim: int, distance: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """Copies of ``pos [M, N, 3]`` in which one random atom is moved to ``distance`` (sigma)
    from another, in a random direction: unphysical configurations (LJ energy ~ 4 (2^12 - 2^6)
    for 0.5 sigma) that a good density model should find unlikely."""
    rng = np.random.default_rng(seed)
    out = torch.as_tensor(pos).clone()
    m, n, _ = out.shape
    for b in range(m):
        i, j = rng.choice(n, size=2, replace=False)
        u = np.zeros(3)
        u[:dim] = rng.normal(size=dim)
        u /= np.linalg.norm(u)
        out[b, i] = out[b, j] + torch.as_tensor(distance * u, dtype=out.dtype)
    return out


def _pair_distances(pos: np.ndarray, dim: int, sort: bool = False) -> np.ndarray:
    """[M, N (N - 1) / 2] distances of the first ``dim`` coordinates of ``pos [M, N, 3]``."""
    x = torch.as_tensor(np.asarray(pos)[..., :dim], dtype=torch.float64)
    return pairwise_distances(x, condensed=True, sort=sort).numpy()


def distance_error(decoded: np.ndarray, reference: np.ndarray, dim: int) -> np.ndarray:
    """RMS difference of the sorted pair distances of ``decoded`` and ``reference`` ([M, N, 3])
    -> [M]. Needs no atom correspondence and no alignment, so it compares every model."""
    diff = _pair_distances(decoded, dim, sort=True) - _pair_distances(reference, dim, sort=True)
    return np.sqrt((diff**2).mean(-1))


def matched_rmsd(
    decoded: np.ndarray,
    reference: np.ndarray,
    align: bool,
    allow_reflection: bool = True,
    n_starts: int = 8,
    n_iter: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """RMSD [M] between point sets ``[M, N, d]`` with no known atom correspondence.

    The correspondence is the optimal assignment (Hungarian algorithm on squared distances).
    With ``align``, assignment and Kabsch superposition alternate (iterative closest point)
    from ``n_starts`` random initial orientations, and the best result is kept.
    """
    decoded = np.asarray(decoded, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    dim = decoded.shape[-1]
    rots = random_rotation(seed, planar=dim == 2, size=n_starts)[:, :dim, :dim]
    out = np.empty(len(decoded))
    for b, (p, q) in enumerate(zip(decoded, reference)):
        if not align:
            cost = ((p[:, None] - q[None]) ** 2).sum(-1)
            r, c = linear_sum_assignment(cost)
            out[b] = math.sqrt(cost[r, c].mean())
            continue
        best = np.inf
        pc, qc = p - p.mean(0), q - q.mean(0)
        for rot in rots:
            for mirror in (1.0, -1.0) if allow_reflection else (1.0,):
                x = pc @ rot.T
                x[:, 0] *= mirror
                for _ in range(n_iter):
                    cost = ((x[:, None] - qc[None]) ** 2).sum(-1)
                    _, c = linear_sum_assignment(cost)
                    x = kabsch_align(x, qc[c], allow_reflection=allow_reflection)
                cost = ((x[:, None] - qc[None]) ** 2).sum(-1)
                r, c = linear_sum_assignment(cost)
                best = min(best, math.sqrt(cost[r, c].mean()))
        out[b] = best
    return out


@torch.no_grad()
def reconstruction_rmsd(model: ConfigurationVAE, pos: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """RMSD [M] (units of ``pos``) between each configuration and its reconstruction from the
    posterior mean, aligned as the model's decoder requires:

    - ordered output in the box frame (:class:`CoordinateVAE`): plain RMSD against the input
      in the model's atom order;
    - ordered output without a frame (:class:`DistanceMatrixVAE`): coordinates by classical MDS
      of the decoded distance matrix, Kabsch-aligned (reflections allowed) to the ordered input;
    - unordered output (:class:`DensityGridVAE`, :class:`InvariantVAE`): :func:`matched_rmsd`,
      with Kabsch alignment when the output has no frame.
    """
    model.eval()
    dim = model.dim
    pos = torch.as_tensor(pos, dtype=_model_dtype(model))
    out = []
    for p in _batches(pos, batch_size):
        dec = model.reconstruct(p)[..., :dim].double()
        if model.ordered_output:
            ref = model.canonical_positions(p)[..., :dim].double()
            if not model.absolute_frame:
                dec = kabsch_align(classical_mds(pairwise_distances(dec), dim), ref, allow_reflection=True)
            out.append(rmsd(dec, ref).numpy())
        else:
            out.append(matched_rmsd(dec.numpy(), p[..., :dim].double().numpy(), align=not model.absolute_frame))
    return np.concatenate(out)


def lj_energies(pos: np.ndarray, dim: int, epsilon: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """Untruncated Lennard-Jones energy of each configuration ``[M, N, 3]`` -> [M] (epsilon)."""
    from equimol.generate.potentials import lennard_jones_energy_forces

    pos = np.asarray(pos, dtype=np.float64)
    return np.array([lennard_jones_energy_forces(p[:, :dim], epsilon, sigma)[0] for p in pos])


def min_pair_distances(pos: np.ndarray, dim: int) -> np.ndarray:
    """Closest pair distance of each configuration ``[M, N, 3]`` -> [M]."""
    return _pair_distances(pos, dim).min(axis=-1)


def physical_validity(
    pos: np.ndarray,
    reference_energies: np.ndarray,
    dim: int,
    percentile: float = 99.0,
    min_distance: float = 0.8,
    sigma: float = 1.0,
    epsilon: float = 1.0,
) -> dict[str, float]:
    """Fraction of configurations that look physical next to a training distribution.

    A configuration is valid when its Lennard-Jones energy is at most the ``percentile``-th
    percentile of ``reference_energies`` (the training configurations' energies) and no pair
    is closer than ``min_distance * sigma``.

    Returns ``{"valid_fraction", "energy_ok_fraction", "no_overlap_fraction",
    "energy_threshold", "median_energy"}``.
    """
    e = lj_energies(pos, dim, epsilon, sigma)
    dmin = min_pair_distances(pos, dim)
    threshold = float(np.percentile(reference_energies, percentile))
    e_ok = np.nan_to_num(e, nan=np.inf) <= threshold
    d_ok = dmin >= min_distance * sigma
    return {
        "valid_fraction": float(np.mean(e_ok & d_ok)),
        "energy_ok_fraction": float(np.mean(e_ok)),
        "no_overlap_fraction": float(np.mean(d_ok)),
        "energy_threshold": threshold,
        "median_energy": float(np.median(e)),
    }


@torch.no_grad()
def invariance_errors(
    model: ConfigurationVAE, pos: torch.Tensor, seed: int = 0, batch_size: int = 256
) -> dict[str, float]:
    """How much the posterior mean moves when the input is rotated, permuted or translated.

    Rotations are about the box centre (planar in 2D), translations by a random vector of
    length 0.1 L, permutations uniform. Each change ``mean_i |mu(g x_i) - mu(x_i)|`` is divided
    by the typical distance between the latent means of two different configurations, so 0 is
    invariant and about 1 is "as different as another configuration".

    Returns ``{"latent_rotation", "latent_permutation", "latent_translation",
    "recon_distance_error", "recon_distance_error_rotated"}`` (the last two from
    :func:`distance_error`, in the units of ``pos``).
    """
    model.eval()
    dim, box = model.dim, model.box_length
    pos = torch.as_tensor(pos, dtype=_model_dtype(model))
    gen = torch.Generator().manual_seed(seed)
    rotated = augment_batch(pos, box, dim, rotate=True, permute=False, generator=gen)
    permuted = augment_batch(pos, box, dim, rotate=False, permute=True, generator=gen)
    shift = torch.zeros(pos.shape[0], 1, 3, dtype=pos.dtype)
    direction = torch.randn(pos.shape[0], dim, generator=gen, dtype=torch.float64).to(pos.dtype)
    shift[:, 0, :dim] = 0.1 * box * direction / direction.norm(dim=-1, keepdim=True)
    translated = pos + shift

    mu = latent_means(model, pos, batch_size)
    m = len(mu)
    other = np.roll(np.arange(m), 1) if m > 1 else np.arange(m)
    scale = float(np.linalg.norm(mu - mu[other], axis=-1).mean()) or 1.0

    def change(x: torch.Tensor) -> float:
        return float(np.linalg.norm(latent_means(model, x, batch_size) - mu, axis=-1).mean() / scale)

    def recon_error(x: torch.Tensor) -> float:
        dec = torch.cat([model.reconstruct(p) for p in _batches(x, batch_size)])
        return float(distance_error(dec.double().numpy(), x.double().numpy(), dim).mean())

    return {
        "latent_rotation": change(rotated),
        "latent_permutation": change(permuted),
        "latent_translation": change(translated),
        "recon_distance_error": recon_error(pos),
        "recon_distance_error_rotated": recon_error(rotated),
    }
