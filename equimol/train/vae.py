"""Lightning wrappers for the configuration VAEs: the module and the data module.

Both are plain LightningModule / LightningDataModule subclasses with typed constructors, so
``equimol fit --config configs/vae/<model>.yaml`` trains them by ``class_path``::

    model:
      class_path: equimol.train.vae.VAEModule
      init_args:
        model:
          class_path: equimol.models.vae.InvariantVAE
          init_args: {n_atoms: 16, box_length: 8.0, dim: 2}
        beta: 1.0
        warmup_epochs: 10
    data:
      class_path: equimol.train.vae.ConfigurationDataModule
      init_args:
        generator: lj-gravity-mc
        gammas: [0.05, 0.2, 1.0]
        generator_kwargs: {n_particles: 16, dim: 2, box_length: 8.0, n_frames: 200}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from ase import Atoms
from torch.utils.data import DataLoader, TensorDataset

from equimol.data.geometry import augment_batch
from equimol.models.vae import ConfigurationVAE

__all__ = [
    "VAEModule",
    "ConfigurationDataModule",
    "stack_configurations",
    "generate_configurations",
]


# --------------------------------------------------------------------------- data
def stack_configurations(frames: Sequence[Atoms]) -> dict[str, Any]:
    """Dense tensors from frames with a common number of atoms, box and dimension.

    Args:
        frames: ``ase.Atoms`` with ``info`` holding ``gamma``, the box side (``box_length`` or
            ``L``), the dimension ``dim``, and optionally the temperature (``temperature`` or
            ``T``).

    Returns:
        ``{"pos": [M, N, 3] float32 Å, "gamma": [M] float32, "temperature": [M] float32,
        "box_length": float, "dim": int, "n_atoms": int}``.
    """
    if len(frames) == 0:
        raise ValueError("stack_configurations: no frames")

    def info(atoms: Atoms, *keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in atoms.info:
                return atoms.info[k]
        if default is not None:
            return default
        raise KeyError(f"stack_configurations: frame info has none of {keys} (keys: {list(atoms.info)})")

    n_atoms = {len(a) for a in frames}
    boxes = {float(info(a, "box_length", "L")) for a in frames}
    dims = {int(info(a, "dim")) for a in frames}
    if len(n_atoms) != 1 or len(boxes) != 1 or len(dims) != 1:
        raise ValueError(
            "stack_configurations: frames must share N, box and dim; got "
            f"N={sorted(n_atoms)}, box_length={sorted(boxes)}, dim={sorted(dims)}"
        )
    pos = torch.as_tensor(np.stack([a.positions for a in frames]), dtype=torch.float32)
    gamma = torch.as_tensor([float(info(a, "gamma")) for a in frames], dtype=torch.float32)
    temp = torch.as_tensor(
        [float(info(a, "temperature", "T", default=float("nan"))) for a in frames], dtype=torch.float32
    )
    return {
        "pos": pos,
        "gamma": gamma,
        "temperature": temp,
        "box_length": boxes.pop(),
        "dim": dims.pop(),
        "n_atoms": n_atoms.pop(),
    }


def _resolve_generator(generator: str | Callable[..., list[Atoms]]) -> Callable[..., list[Atoms]]:
    if callable(generator):
        return generator
    from equimol.generate import GENERATORS  # lazy: the simulators are only needed here

    if generator not in GENERATORS:
        raise KeyError(f"unknown generator {generator!r}; registered: {sorted(GENERATORS)}")
    return GENERATORS[generator]


def generate_configurations(
    generator: str | Callable[..., list[Atoms]],
    gammas: Sequence[float],
    generator_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[Atoms]:
    """Frames from ``generator`` at each gravity strength, concatenated.

    Calls ``generator(gamma=g, seed=seed + k, **generator_kwargs)`` for the k-th value ``g``
    of ``gammas``. ``generator`` is a name in ``equimol.generate.GENERATORS`` (e.g.
    ``"lj-gravity-mc"``) or a callable with that signature.
    """
    fn = _resolve_generator(generator)
    frames: list[Atoms] = []
    for k, g in enumerate(gammas):
        frames.extend(fn(gamma=float(g), seed=seed + k, **(generator_kwargs or {})))
    return frames


class ConfigurationDataModule(pl.LightningDataModule):
    """Configurations from a generator at several gravity strengths, as dense tensors.

    Batches are ``(pos [B, N, 3] float32 Å, gamma [B] float32)``.

    Args:
        generator: name in ``equimol.generate.GENERATORS`` or a callable
            ``(gamma=..., seed=..., **generator_kwargs) -> list[ase.Atoms]``.
        gammas: gravity strengths mixed in the data set.
        generator_kwargs: further arguments of the generator (``n_particles``, ``dim``,
            ``box_length``, ``n_frames``, ...).
        val_fraction: fraction of the configurations held out for validation (random split).
        test_fraction: fraction held out for testing.
        batch_size: configurations per batch.
        seed: seed of the generator (``seed + k`` for the k-th gamma) and of the split.
        cache: optional ``.pt`` file; the generated tensors are stored there (tensors and plain
            values only, read back with ``weights_only=True``) and read back on later runs
            with the same generator name, gammas, arguments and seed (a mismatch regenerates;
            delete the file after changing the generator's code). A file that is damaged or
            holds other objects is an error naming it; it is never unpickled.
    """

    def __init__(
        self,
        generator: str | Callable[..., list[Atoms]] = "lj-gravity-mc",
        gammas: Sequence[float] = (0.05, 0.2, 1.0),
        generator_kwargs: dict[str, Any] | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        batch_size: int = 64,
        seed: int = 0,
        cache: str | None = None,
    ) -> None:
        super().__init__()
        if not gammas:
            raise ValueError("ConfigurationDataModule: gammas is empty")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"ConfigurationDataModule: bad split val_fraction={val_fraction}, "
                f"test_fraction={test_fraction}"
            )
        self.generator = generator
        self.gammas = [float(g) for g in gammas]
        self.generator_kwargs = dict(generator_kwargs or {})
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.cache = cache
        self.data: dict[str, Any] | None = None
        self.splits: dict[str, torch.Tensor] = {}

    def _key(self) -> dict[str, Any]:
        gen = self.generator if isinstance(self.generator, str) else getattr(
            self.generator, "__qualname__", repr(self.generator)
        )
        return {"generator": gen, "gammas": self.gammas, "kwargs": self.generator_kwargs, "seed": self.seed}

    def prepare_data(self) -> None:
        self._load()

    def _load(self) -> dict[str, Any]:
        if self.data is not None:
            return self.data
        key = json.dumps(self._key(), sort_keys=True, default=repr)
        if self.cache and Path(self.cache).is_file():
            stored = self._read_cache(Path(self.cache))
            if stored.get("key") == key:
                self.data = stored["data"]
                return self.data
        frames = generate_configurations(self.generator, self.gammas, self.generator_kwargs, self.seed)
        self.data = stack_configurations(frames)
        if self.cache:
            self._write_cache(Path(self.cache), key, self.data)
        return self.data

    @staticmethod
    def _read_cache(path: Path) -> dict[str, Any]:
        """The cache at ``path``: ``{"key": str, "data": {...}}``, tensors and plain values only.

        It is verified and read with ``weights_only=True`` (never as pickled objects, which run
        code); a damaged file or one holding anything else is an error naming it.
        """
        from equimol.train.checkpoints import CheckpointError, read_checkpoint_bytes, torch_load_plain

        kind = "VAE data cache"
        stored = torch_load_plain(read_checkpoint_bytes(path, kind=kind), path, kind=kind)
        data = stored.get("data") if isinstance(stored, dict) else None
        if not isinstance(data, dict) or not isinstance(stored.get("key"), (str, dict)) or not all(
            isinstance(data.get(name), torch.Tensor) for name in ("pos", "gamma", "temperature")
        ):
            raise CheckpointError(f"{path} is not a VAE data cache of equimol; delete it to regenerate the data")
        return stored

    @staticmethod
    def _write_cache(path: Path, key: str, data: dict[str, Any]) -> None:
        """Store ``data`` (tensors and plain numbers) and its ``key`` (a JSON string) whole or not
        at all (a temporary file beside ``path``, then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = {name: value if isinstance(value, torch.Tensor) else value.item() if hasattr(value, "item") else value
                 for name, value in data.items()}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save({"key": key, "data": plain}, temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def setup(self, stage: str | None = None) -> None:
        data = self._load()
        m = data["pos"].shape[0]
        perm = torch.randperm(m, generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(self.val_fraction * m))
        n_test = int(round(self.test_fraction * m))
        self.splits = {
            "val": perm[:n_val],
            "test": perm[n_val : n_val + n_test],
            "train": perm[n_val + n_test :],
        }

    # properties the models and analyses need
    @property
    def box_length(self) -> float:
        return self._load()["box_length"]

    @property
    def dim(self) -> int:
        return self._load()["dim"]

    @property
    def n_atoms(self) -> int:
        return self._load()["n_atoms"]

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pos [M, N, 3], gamma [M])`` of a split (``"train"``, ``"val"``, ``"test"``)."""
        if not self.splits:
            self.setup()
        idx = self.splits[split]
        return self.data["pos"][idx], self.data["gamma"][idx]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        pos, gamma = self.tensors(split)
        gen = torch.Generator().manual_seed(self.seed + 1) if shuffle else None
        return DataLoader(
            TensorDataset(pos, gamma), batch_size=self.batch_size, shuffle=shuffle, generator=gen
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


# --------------------------------------------------------------------------- module
class VAEModule(pl.LightningModule):
    """Trains any :class:`~equimol.models.vae.ConfigurationVAE` on the beta-weighted ELBO.

    The KL weight ramps linearly from 0 to ``beta`` over the first ``warmup_epochs`` epochs
    (per step, so the ramp is smooth), then stays at ``beta``. Logged per epoch under
    ``train/`` and ``val/``: ``loss``, ``reconstruction``, ``kl`` and ``beta``; ``val/elbo``
    is the negative ELBO with beta = 1 (comparable between runs).

    Args:
        model: the VAE (by ``class_path`` in a config).
        beta: final KL weight.
        warmup_epochs: epochs of the linear KL ramp (0: no ramp).
        lr: Adam learning rate.
        augment_rotation: rotate each training batch randomly about the box centre.
        augment_permutation: relabel the atoms of each training batch randomly.
        seed: seed of the posterior sampling and the augmentation.
    """

    def __init__(
        self,
        model: ConfigurationVAE,
        beta: float = 1.0,
        warmup_epochs: int = 0,
        lr: float = 1e-3,
        augment_rotation: bool = False,
        augment_permutation: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(model, ConfigurationVAE):
            raise TypeError(f"VAEModule: model must be a ConfigurationVAE, got {type(model).__name__}")
        if beta < 0 or warmup_epochs < 0:
            raise ValueError(f"VAEModule: beta ({beta}) and warmup_epochs ({warmup_epochs}) must be >= 0")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)
        self.lr = float(lr)
        self.augment_rotation = bool(augment_rotation)
        self.augment_permutation = bool(augment_permutation)
        self.seed = int(seed)
        self._rng: torch.Generator | None = None

    def _generator(self) -> torch.Generator:
        if self._rng is None:
            self._rng = torch.Generator(device="cpu").manual_seed(self.seed)
        return self._rng

    def current_beta(self) -> float:
        """The KL weight at the current step."""
        if self.warmup_epochs == 0 or self._trainer is None:
            return self.beta
        steps = max(self.trainer.num_training_batches, 1)
        progress = (self.current_epoch + (self.global_step % steps) / steps) / self.warmup_epochs
        return self.beta * min(1.0, progress)

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(dm, ConfigurationDataModule):
            m = self.model
            if (dm.n_atoms, dm.dim) != (m.n_atoms, m.dim) or abs(dm.box_length - m.box_length) > 1e-6:
                raise ValueError(
                    f"VAEModule: data have N={dm.n_atoms}, dim={dm.dim}, box_length={dm.box_length} "
                    f"but the model has N={m.n_atoms}, dim={m.dim}, box_length={m.box_length}"
                )

    def on_train_epoch_start(self) -> None:
        self.model.train()  # Lightning keeps a module's eval mode; the ELBO must sample z

    def _eps_generator(self, pos: torch.Tensor) -> torch.Generator | None:
        return self._generator() if pos.device.type == "cpu" else None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pos, _ = batch
        if self.augment_rotation or self.augment_permutation:
            pos = augment_batch(
                pos, self.model.box_length, self.model.dim,
                rotate=self.augment_rotation, permute=self.augment_permutation,
                generator=self._generator(),
            )  # fmt: skip
        beta = self.current_beta()
        out = self.model.elbo(pos, beta=beta, generator=self._eps_generator(pos))
        b = pos.shape[0]
        for k, v in out.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=b)
        self.log("train/beta", beta, on_step=False, on_epoch=True, batch_size=b)
        return out["loss"]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        pos, _ = batch
        out = self.model.elbo(pos, beta=self.beta)
        b = pos.shape[0]
        for k, v in out.items():
            self.log(f"val/{k}", v, on_epoch=True, batch_size=b, prog_bar=k == "loss")
        self.log("val/elbo", out["reconstruction"] + out["kl"], on_epoch=True, batch_size=b)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        pos, _ = batch
        out = self.model.elbo(pos, beta=1.0)
        self.log("test/elbo", out["loss"], on_epoch=True, batch_size=pos.shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)
