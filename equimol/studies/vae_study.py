"""The VAE results table: four representations of a Lennard-Jones fluid under gravity.

Trains every configuration VAE of :mod:`equimol.models.vae` on the same Monte Carlo data (the
``lj-gravity-mc`` generator at several gravity strengths gamma, reduced units: lengths in
sigma, energies in epsilon), then measures on held-out configurations:

==================  ========================================================================
column              meaning
==================  ========================================================================
``recon``           reconstruction term of the negative ELBO (nats, each model its own
                    likelihood: not comparable between rows)
``dist err``        RMS error of the sorted pair distances of the reconstruction (sigma);
                    comparable between rows
``RMSD``            RMSD of the reconstruction after the alignment the decoder needs (sigma):
                    none (coordinates), MDS + Kabsch with reflection (distance matrix),
                    assignment (grid), assignment + Kabsch (invariant)
``ARI km / gmm``    adjusted Rand index of k-means / Gaussian-mixture clusters of the latent
                    means against the gamma labels
``AUC gamma``       ROC AUC of the negative ELBO telling configurations at an unseen gamma
                    from held-out training-gamma ones
``AUC overlap``     the same for held-out configurations with two atoms pushed to 0.5 sigma
``valid rec / gen`` fraction of reconstructed / prior-sampled configurations with LJ energy
                    below the 99th percentile of the training energies and no pair closer
                    than 0.8 sigma
``dmu rot / perm``  latent change under a rotation about the box centre / a relabelling,
                    relative to the typical latent distance between two configurations
``dist err rot``    ``dist err`` for rotated inputs
==================  ========================================================================

Run ``equimol study vae`` (``--help`` for the options; ``python -m equimol.studies.vae_study``
is the same command); it prints the Markdown table and can write it, the PCA figures and a
JSON of the numbers to a folder.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from jsonargparse.typing import PositiveInt

from equimol import _cli_errors as errors
from equimol.analysis import latent as la
from equimol.models.vae import (
    ConfigurationVAE,
    CoordinateVAE,
    DensityGridVAE,
    DistanceMatrixVAE,
    InvariantVAE,
)
from equimol.train.vae import ConfigurationDataModule, VAEModule, generate_configurations, stack_configurations

__all__ = ["VAEVariant", "default_variants", "StudyData", "make_study_data", "train_variant",
           "evaluate_variant", "run_vae_study", "format_table", "build_parser", "run_parsed", "main"]

logger = logging.getLogger(__name__)


@dataclass
class VAEVariant:
    """One row of the table: a model factory ``(n_atoms, box_length, dim) -> ConfigurationVAE``
    and how to train it."""

    name: str
    build: Callable[[int, float, int], ConfigurationVAE]
    augment_rotation: bool = False
    augment_permutation: bool = False
    module_kwargs: dict[str, Any] = field(default_factory=dict)


def default_variants(latent_dim: int = 8) -> list[VAEVariant]:
    """The rows of the results table: the coordinate VAE unsorted, sorted by x, and sorted with
    rotation + permutation augmentation; the distance-matrix, density-grid and invariant VAEs."""
    k = latent_dim
    return [
        VAEVariant("CoordinateVAE (unsorted)", lambda n, L, d: CoordinateVAE(n, L, d, k, order="none")),
        VAEVariant("CoordinateVAE", lambda n, L, d: CoordinateVAE(n, L, d, k)),
        VAEVariant("CoordinateVAE + augmentation", lambda n, L, d: CoordinateVAE(n, L, d, k),
                   augment_rotation=True, augment_permutation=True),
        VAEVariant("DistanceMatrixVAE", lambda n, L, d: DistanceMatrixVAE(n, L, d, k)),
        VAEVariant("DensityGridVAE", lambda n, L, d: DensityGridVAE(n, L, d, k, grid_size=32 if d == 2 else 16)),
        VAEVariant("InvariantVAE", lambda n, L, d: InvariantVAE(n, L, d, k)),
    ]  # fmt: skip


@dataclass
class StudyData:
    """The data module (train/val/test) and the out-of-distribution sets."""

    datamodule: ConfigurationDataModule
    ood_gamma: torch.Tensor  # [M, N, 3] at a gamma not in training
    ood_overlap: torch.Tensor  # [M, N, 3] test configurations with a pair at 0.5 sigma
    train_energies: np.ndarray  # [M_train] LJ energies (epsilon)


def make_study_data(
    gammas: Sequence[float] = (0.05, 0.2, 1.0),
    ood_gamma: float = 0.5,
    n_frames: int = 200,
    generator_kwargs: dict[str, Any] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    cache: str | None = None,
) -> StudyData:
    """Generate (or read from ``cache``) the study's data with ``lj-gravity-mc``.

    ``generator_kwargs`` default to 16 particles in a 2D box of side 8 sigma at T = 1.
    Splits: 70% train, 10% validation, 20% test (the test split is what the table measures).
    """
    kwargs = {"n_particles": 16, "dim": 2, "box_length": 8.0, "temperature": 1.0, "n_frames": n_frames}
    kwargs.update(generator_kwargs or {})
    kwargs["n_frames"] = n_frames
    dm = ConfigurationDataModule(
        generator="lj-gravity-mc", gammas=list(gammas), generator_kwargs=kwargs,
        val_fraction=0.1, test_fraction=0.2, batch_size=batch_size, seed=seed, cache=cache,
    )  # fmt: skip
    dm.setup()
    test_pos, _ = dm.tensors("test")
    n_ood = len(test_pos)
    ood_frames = generate_configurations(
        "lj-gravity-mc", [ood_gamma], {**kwargs, "n_frames": n_ood}, seed=seed + 1000
    )
    ood = stack_configurations(ood_frames)["pos"]
    overlap = la.overlapping_configurations(test_pos, dm.dim, distance=0.5, seed=seed)
    train_pos, _ = dm.tensors("train")
    return StudyData(dm, ood, overlap, la.lj_energies(train_pos.numpy(), dm.dim))


def train_variant(
    variant: VAEVariant,
    data: StudyData,
    epochs: int = 100,
    beta: float = 1.0,
    warmup_epochs: int = 10,
    lr: float = 2e-3,
    seed: int = 0,
) -> ConfigurationVAE:
    """Train one variant with Lightning (CPU, no logger) and return the trained model."""
    pl.seed_everything(seed, verbose=False)
    dm = data.datamodule
    model = variant.build(dm.n_atoms, dm.box_length, dm.dim)
    module = VAEModule(
        model, beta=beta, warmup_epochs=warmup_epochs, lr=lr, seed=seed,
        augment_rotation=variant.augment_rotation, augment_permutation=variant.augment_permutation,
        **variant.module_kwargs,
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return model.eval()


@torch.no_grad()
def evaluate_variant(model: ConfigurationVAE, data: StudyData, seed: int = 0) -> dict[str, float]:
    """The table's numbers for one trained model (see the module docstring)."""
    model.eval()
    dm = data.datamodule
    dim = dm.dim
    pos, gamma = dm.tensors("test")
    g = torch.Generator().manual_seed(seed)
    recon_term = float(model.elbo(pos, reduce=False)["reconstruction"].mean())
    decoded = model.reconstruct(pos)
    generated = model.sample(len(pos), g)
    mu = la.latent_means(model, pos)
    scores_in = la.negative_elbo(model, pos)
    inv = la.invariance_errors(model, pos, seed=seed)
    clusters = la.cluster_scores(mu, gamma.numpy(), seed=seed)
    return {
        "recon": recon_term,
        "dist_err": float(la.distance_error(decoded.numpy(), pos.numpy(), dim).mean()),
        "rmsd": float(la.reconstruction_rmsd(model, pos).mean()),
        "ari_kmeans": clusters["kmeans_ari"],
        "ari_gmm": clusters["gmm_ari"],
        "auc_gamma": la.anomaly_auc(scores_in, la.negative_elbo(model, data.ood_gamma)),
        "auc_overlap": la.anomaly_auc(scores_in, la.negative_elbo(model, data.ood_overlap)),
        "valid_recon": la.physical_validity(decoded.numpy(), data.train_energies, dim)["valid_fraction"],
        "valid_generated": la.physical_validity(generated.numpy(), data.train_energies, dim)["valid_fraction"],
        "dmu_rotation": inv["latent_rotation"],
        "dmu_permutation": inv["latent_permutation"],
        "dist_err_rotated": inv["recon_distance_error_rotated"],
    }


COLUMNS = [
    ("recon", "recon", "{:.1f}"),
    ("dist_err", "dist err", "{:.3f}"),
    ("rmsd", "RMSD", "{:.3f}"),
    ("ari_kmeans", "ARI km", "{:.2f}"),
    ("ari_gmm", "ARI gmm", "{:.2f}"),
    ("auc_gamma", "AUC gamma", "{:.2f}"),
    ("auc_overlap", "AUC overlap", "{:.2f}"),
    ("valid_recon", "valid rec", "{:.2f}"),
    ("valid_generated", "valid gen", "{:.2f}"),
    ("dmu_rotation", "dmu rot", "{:.2g}"),
    ("dmu_permutation", "dmu perm", "{:.2g}"),
    ("dist_err_rotated", "dist err rot", "{:.3f}"),
]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`run_vae_study`'s rows."""
    head = "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|---|" + "|".join("---:" for _ in COLUMNS) + "|"
    lines = [head, rule]
    for row in rows:
        cells = [fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_vae_study(
    gammas: Sequence[float] = (0.05, 0.2, 1.0),
    ood_gamma: float = 0.5,
    n_frames: int = 200,
    dim: int = 2,
    epochs: int = 100,
    latent_dim: int = 8,
    seed: int = 0,
    variants: Sequence[VAEVariant] | None = None,
    out_dir: str | None = None,
    cache: str | None = None,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Generate the data, train and evaluate every variant; return one dict per row.

    With ``out_dir``, also writes ``vae_table.md``, ``vae_results.json`` and one PCA figure of
    the latent means per model (``latent_pca_<model>.png``). With ``verbose``, logs progress
    (``logging``, level INFO, logger ``equimol.studies.vae_study``).
    """
    t0 = time.perf_counter()
    box = 8.0 if dim == 2 else 4.0
    data = make_study_data(
        gammas, ood_gamma, n_frames,
        generator_kwargs={"n_particles": 16, "dim": dim, "box_length": box},
        seed=seed, cache=cache,
    )  # fmt: skip
    if verbose:
        logger.info("data: %d configurations in %.0f s", data.datamodule.data["pos"].shape[0], time.perf_counter() - t0)
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in variants or default_variants(latent_dim):
        t1 = time.perf_counter()
        model = train_variant(variant, data, epochs=epochs, seed=seed)
        row = {"model": variant.name, **evaluate_variant(model, data, seed=seed)}
        row["seconds"] = time.perf_counter() - t1
        rows.append(row)
        if verbose:
            logger.info("%s: %.0f s", variant.name, row["seconds"])
        if out:
            pos, gamma = data.datamodule.tensors("test")
            fig = la.plot_latent_pca(la.latent_means(model, pos), gamma.numpy(), title=variant.name)
            slug = variant.name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("+_", "")
            fig.savefig(out / f"latent_pca_{slug}.png", dpi=120, bbox_inches="tight")
    if out:
        (out / "vae_table.md").write_text(format_table(rows) + "\n")
        (out / "vae_results.json").write_text(json.dumps(rows, indent=2))
    if verbose:
        logger.info("total: %.0f s", time.perf_counter() - t0)
    return rows


def build_parser() -> ArgumentParser:
    """The parser of ``equimol study vae``."""
    parser = ArgumentParser(prog="equimol study vae", description=__doc__.split("\n")[0], **errors.PARSER_KWARGS)
    parser.add_argument("--config", action=ActionConfigFile, help="the options below as a YAML file")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.05, 0.2, 1.0],
                        help="gravity strengths of the training data")
    parser.add_argument("--ood_gamma", type=float, default=0.5, help="the unseen gravity strength (AUC gamma)")
    parser.add_argument("--n_frames", type=PositiveInt, default=200, help="configurations per gamma")
    parser.add_argument("--dim", type=Literal[2, 3], default=2, help="2D or 3D configurations")
    parser.add_argument("--epochs", type=PositiveInt, default=100, help="training epochs of every model")
    parser.add_argument("--latent_dim", type=PositiveInt, default=8, help="size of the latent vector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Optional[str], default=None, help="folder for the table, JSON and PCA figures")
    parser.add_argument("--cache", type=Optional[str], default=None, help=".pt file caching the generated data")
    return parser


def run_parsed(args: Namespace, argv: Sequence[str] = ()) -> int:
    """Run the study with parsed options and print the results table to stdout."""
    torch.set_num_threads(1)
    rows = run_vae_study(
        list(args.gammas), args.ood_gamma, args.n_frames, args.dim, args.epochs, args.latent_dim,
        args.seed, out_dir=args.out, cache=args.cache,
    )  # fmt: skip
    print(format_table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``equimol study vae [--out DIR] [--dim 3] ...``: print the results table; errors raise."""
    args = list(sys.argv[1:] if argv is None else argv)
    with errors.command("equimol study vae"):
        return run_parsed(build_parser().parse_args(args), args)


if __name__ == "__main__":  # pragma: no cover
    # ``python -m equimol.studies.vae_study ...``: the same as ``equimol study vae ...``
    from equimol.cli import main as _equimol

    raise SystemExit(_equimol(["study", "vae", *sys.argv[1:]]))
