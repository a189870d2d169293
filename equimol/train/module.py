"""``PotentialModule``: a LightningModule that trains any potential on energies, forces and stress.

The wrapped ``model`` is any :class:`equimol.models.Potential` (equimol's own or a user's
subclass): ``model(batch, compute_forces, compute_stress)`` returns ``energy [B]`` eV and, when
asked, ``forces [N, 3]`` eV/Å and ``stress [B, 3, 3]`` eV/Å³; ``model.set_statistics(stats)``
initialises data-dependent parameters; ``model.cutoff`` must match the data's graphs.

Fine-tuning (``init_from``, ``init_statistics``, ``freeze``) goes through
:mod:`equimol.train.finetune`.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.models.base import Potential
from equimol.train import centring
from equimol.train.finetune import (
    STATISTICS_MODES,
    FinetuneReport,
    check_source_path,
    freeze_parameters,
    load_pretrained_weights,
)
from equimol.train.losses import PotentialLoss, atoms_per_structure
from equimol.train.metrics import PotentialMetrics

__all__ = ["PotentialModule", "check_cutoffs", "model_cutoff", "load_potential", "parity_pairs"]

STAGES = ("train", "val", "test")


def model_cutoff(model: Potential) -> float:
    """The radius (Å) of the graphs ``model`` reads, from its contract (0: it reads no edges)."""
    return float(model.cutoff)


def check_cutoffs(model_value: float | None, data_value: float | None) -> None:
    """Raise ``ValueError`` if the model's cutoff and the data's graph cutoff differ.

    A model trained on graphs of another radius sees neighbours it was never built for
    (or misses some), so the two must be the same number of Å. A model that reads no edges
    (cutoff 0) takes graphs of any radius; None (not given) checks nothing.
    """
    if model_value is None or data_value is None or float(model_value) == 0:
        return
    if abs(float(model_value) - float(data_value)) > 1e-9:
        raise ValueError(
            f"cutoff mismatch: the model's cutoff is {model_value} Å but the data's graph cutoff is "
            f"{data_value} Å; set model.init_args.model.init_args.cutoff and data.init_args.cutoff "
            "to the same value"
        )


def _given_cli_hparams() -> bool:
    """True while LightningCLI instantiates a module with its parsed config as hyperparameters."""
    try:
        from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - other Lightning versions
        return False
    return _given_hyperparameters.get() is not None


class PotentialModule(pl.LightningModule):
    """Trains a potential with a weighted energy-per-atom, force and stress loss.

    Args:
        model: the potential, a :class:`~equimol.models.Potential` (in a config,
            ``class_path`` and ``init_args`` of any importable subclass, a user's own included).
        energy_weight: weight of the energy-per-atom term.
        forces_weight: weight of the force term; 0 trains on energies only (then forces are
            computed only where the data has force labels, for the metrics).
        stress_weight: weight of the stress term.
        loss: ``"mse"`` or ``"huber"``.
        huber_delta: transition point of the Huber loss (eV/atom, eV/Å, eV/Å³ per term).
        optimizer: a callable ``params -> Optimizer`` (in a config: any ``torch.optim`` class).
        lr_scheduler: a callable ``optimizer -> scheduler``, or None for a constant rate.
        lr_scheduler_monitor: the logged value a ``ReduceLROnPlateau`` scheduler watches.
        apply_statistics: hand the training-set statistics to ``model.set_statistics`` before
            the first step of a new run (they are recorded in the checkpoint either way).
        centre_energies: with ``apply_statistics``, also correct the per-species reference
            energies so that the untrained model predicts the mean of the training energies
            (:func:`~equimol.train.centring.centre_energies`, on up to
            ``centring_structures`` training structures): an untrained network adds a constant
            of order the energy scale per atom, which a short run cannot remove.
        centring_structures: how many training structures the correction is measured on.
        init_from: a checkpoint of ``equimol fit`` (``.ckpt``) to fine-tune: its weights
            initialise ``model`` when fitting starts, matched by name and, for per-species
            tensors, by atomic number (``model`` may list more elements; see
            :func:`~equimol.train.finetune.load_pretrained_weights`). Read once, at the start of
            a new run: the checkpoints of the fine-tuned run hold all its weights, so they load
            and resume without this file. Not a ``.pt2`` package (compiled code, not weights).
        init_statistics: with ``init_from``: ``"recompute"`` sets the per-species shifts and
            scales from the new training data as a fresh fit does; ``"keep"`` keeps the
            trained ones (elements new to the model get theirs from the data). The neighbour
            normalisation stays as trained either way.
        freeze: parameter-name prefixes or glob patterns (``["embedding*", "layers.0.*"]``,
            matched against the full name or its end) whose parameters keep
            ``requires_grad=False`` and are left out of the optimizer; a pattern that matches
            nothing is an error listing the prefixes there are.
        train_metrics: also accumulate the MAE/RMSE/R² metrics over the training batches
            (the loss terms are logged either way). Off, a training step of a small model is
            markedly cheaper (the metrics' bookkeeping costs about as much as a small
            network's forward and backward pass); validation and test metrics are unchanged.

    Logged values (per epoch): ``{train,val,test}/loss``, the loss terms
    ``{stage}/loss_{energy_per_atom,forces,stress}``, and the metrics of
    :class:`~equimol.train.metrics.PotentialMetrics` as ``{stage}/{quantity}_{mae,rmse,r2}``.
    """

    def __init__(
        self,
        model: Potential,
        energy_weight: float = 1.0,
        forces_weight: float = 10.0,
        stress_weight: float = 0.0,
        loss: Literal["mse", "huber"] = "mse",
        huber_delta: float = 0.01,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = torch.optim.lr_scheduler.ReduceLROnPlateau,
        lr_scheduler_monitor: str = "val/loss",
        apply_statistics: bool = True,
        centre_energies: bool = True,
        centring_structures: int = 512,
        init_from: str | None = None,
        init_statistics: Literal["recompute", "keep"] = "recompute",
        freeze: list[str] | None = None,
        train_metrics: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, Potential):
            raise TypeError(
                f"PotentialModule trains an equimol Potential; {type(model).__name__} is not one: subclass "
                "equimol.models.Potential, declaring atomic_numbers and cutoff (docs: Write your own model)"
            )
        # Under LightningCLI the parsed config (with the model's class_path) is stored, so
        # ``load_from_checkpoint`` rebuilds the model. Objects (a module, a partial) are never
        # pickled into a checkpoint: it stays loadable with ``weights_only=True``.
        self.save_hyperparameters(ignore=None if _given_cli_hparams() else ["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.loss_fn = PotentialLoss(energy_weight, forces_weight, stress_weight, loss, huber_delta)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.apply_statistics = apply_statistics
        self.centre_energies = centre_energies
        if centring_structures < 1:
            raise ValueError(f"centring_structures must be >= 1, got {centring_structures}")
        self.centring_structures = int(centring_structures)
        if init_statistics not in STATISTICS_MODES:
            raise ValueError(
                f"init_statistics must be one of {', '.join(STATISTICS_MODES)}, got {init_statistics!r}"
            )
        self.init_from = None if init_from is None else str(check_source_path(init_from))
        self.init_statistics = init_statistics
        self.frozen = freeze_parameters(model, freeze) if freeze else []
        #: what ``init_from`` gave the model (None until it is read, or restored from a checkpoint)
        self.init_report: FinetuneReport | None = None
        self._init_missing = False
        self.train_metrics = bool(train_metrics)
        self.metrics = nn.ModuleDict({f"{stage}_metrics": PotentialMetrics() for stage in STAGES})
        self.statistics: dict[str, Any] | None = None
        self._statistics_applied = False
        self._compile_times_reported = 0

    def __deepcopy__(self, memo: dict) -> PotentialModule:
        # The optimizer and scheduler factories built by the CLI reach the whole parsed run
        # (trainer, logger, data): share them instead of copying them along with the weights
        # (the EMA callback deep-copies this module).
        for factory in (self.optimizer_factory, self.lr_scheduler_factory):
            memo[id(factory)] = factory
        return copy._reconstruct(self, memo, *self.__reduce_ex__(4))

    # ----------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        """Check the cutoffs and, when fitting a new model, hand it the training-set statistics
        (and, with ``init_from``, the trained weights first).

        On resume the checkpoint's weights, restored after this hook, replace whatever the
        statistics initialised, so a resumed run continues from exactly the saved state.
        """
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        check_cutoffs(model_cutoff(self.model), getattr(datamodule, "cutoff", None))
        if stage != "fit":
            return
        statistics = getattr(datamodule, "statistics", None)
        if self.init_from is not None and self.init_report is None:
            self._initialise_from_trained(statistics)
        elif not self._statistics_applied and statistics is not None and self.apply_statistics:
            sample = _training_sample(getattr(datamodule, "train_set", None), self.centring_structures)
            if self.centre_energies and sample:
                centring.centre_energies(self.model, sample, statistics)
            else:
                self.model.set_statistics(statistics)
        if not self._statistics_applied and statistics is not None:
            self.statistics = statistics.to_dict()
            self._statistics_applied = True

    def _initialise_from_trained(self, statistics: Any) -> None:
        """Load ``init_from`` into the model, with the shifts and scales of ``init_statistics``.

        A missing file is reported when fitting starts (:meth:`on_fit_start`), after a resumed
        run has restored its checkpoint: resuming a fine-tuned run does not need the file.
        """
        if not Path(self.init_from).exists():
            self._init_missing = True
            return
        use_data = statistics is not None and self.apply_statistics
        model = type(self.model)
        # the trained model may name the classes this run is configured with (already imported)
        trusted = [f"{model.__module__}.{model.__qualname__}", *_class_paths(dict(self.hparams))]
        self.init_report = load_pretrained_weights(
            self.model,
            self.init_from,
            statistics=self.init_statistics if use_data else "keep",
            data_statistics=statistics if use_data else None,
            trusted_modules=trusted,
            model_config=self.hparams.get("model"),
        )
        self.init_report.frozen = tuple(self.frozen)
        self._init_missing = False

    def on_fit_start(self) -> None:
        if self._init_missing and self.init_report is None:
            raise FileNotFoundError(f"model.init_args.init_from: {self.init_from}: no such checkpoint")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["equimol"] = {
            "statistics": self.statistics,
            "statistics_applied": self._statistics_applied,
            "cutoff": model_cutoff(self.model),
            "atomic_numbers": list(self.model.atomic_numbers),
            "init_from": None if self.init_report is None else self.init_report.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("equimol", {})
        self.statistics = saved.get("statistics")
        self._statistics_applied = bool(saved.get("statistics_applied", False))
        init = saved.get("init_from")
        self.init_report = FinetuneReport.from_dict(init) if isinstance(init, dict) else None

    # ---------------------------------------------------------------------------- forward
    def forward(self, batch: Data, compute_forces: bool = True, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        """The wrapped model's output: ``energy [B]``, ``forces [N, 3]``, ``stress [B, 3, 3]``."""
        return self.model(batch, compute_forces=compute_forces, compute_stress=compute_stress)

    def _predict(self, batch: Data, training: bool) -> dict[str, torch.Tensor]:
        has = {key: getattr(batch, key, None) is not None for key in (K.FORCES, K.STRESS)}
        if training:
            forces = self.loss_fn.needs(K.FORCES)
            stress = self.loss_fn.needs(K.STRESS)
        else:  # evaluate whatever has labels, for the metrics
            forces = self.loss_fn.needs(K.FORCES) or has[K.FORCES]
            stress = self.loss_fn.needs(K.STRESS) or has[K.STRESS]
        # Lightning runs validation and test without gradients; forces need them.
        with torch.enable_grad():
            return self(batch, compute_forces=forces, compute_stress=stress)

    def _step(self, batch: Data, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        prediction = self._predict(batch, training=stage == "train")
        terms = self.loss_fn(prediction, batch)
        batch_size = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
        loss = terms.pop("loss")
        self.log(f"{stage}/loss", loss, batch_size=batch_size, sync_dist=True,
                 prog_bar=stage != "test", on_step=False, on_epoch=True)
        for name, value in terms.items():
            self.log(f"{stage}/loss_{name}", value, batch_size=batch_size, sync_dist=True,
                     on_step=False, on_epoch=True)
        if stage == "train" and not self.train_metrics:
            return loss, prediction
        metrics = self.metrics[f"{stage}_metrics"]
        updated = metrics.update(prediction, batch)
        for name, metric in metrics.metrics_of(updated).items():
            self.log(f"{stage}/{name}", metric, batch_size=batch_size, on_step=False, on_epoch=True)
        return loss, prediction

    def training_step(self, batch: Data, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, "train")
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Data, batch_idx: int) -> None:
        self._report_compile_times()

    def _report_compile_times(self) -> None:
        """Log the seconds a compiled model (``compile: true``) spent making a new graph as the
        metric ``compile_seconds`` (the console line comes from the model's own logger)."""
        traced = getattr(self.model, "traced", None)
        times = getattr(traced, "compile_times", [])
        for timing in times[self._compile_times_reported :]:
            self.log("compile_seconds", timing.total, on_step=True, on_epoch=False, rank_zero_only=True)
        self._compile_times_reported = len(times)

    def validation_step(self, batch: Data, batch_idx: int) -> dict[str, torch.Tensor]:
        _, prediction = self._step(batch, "val")
        return parity_pairs(prediction, batch)

    def test_step(self, batch: Data, batch_idx: int) -> dict[str, torch.Tensor]:
        _, prediction = self._step(batch, "test")
        return parity_pairs(prediction, batch)

    def predict_step(self, batch: Data, batch_idx: int) -> dict[str, torch.Tensor]:
        """Predictions of a batch: ``energy [B]`` eV, ``forces [N, 3]`` eV/Å, ``n_atoms [B]``."""
        with torch.enable_grad():
            out = self(batch, compute_forces=True, compute_stress=getattr(batch, K.STRESS, None) is not None)
        result = {key: value.detach() for key, value in out.items() if key in K.LABEL_KEYS}
        result["n_atoms"] = atoms_per_structure(batch).long()
        return result

    # -------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        # frozen parameters (``freeze``) are left out
        optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.lr_scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}


def _class_paths(value: Any) -> list[str]:
    """The ``class_path`` strings anywhere inside a config ``value`` (dicts, lists, Namespaces)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        found = [value["class_path"]] if isinstance(value.get("class_path"), str) else []
        return found + [path for item in value.values() for path in _class_paths(item)]
    if isinstance(value, (list, tuple)):
        return [path for item in value for path in _class_paths(item)]
    return []


#: Hyperparameters that hold data (a file name, name patterns), never something to import.
_DATA_HPARAMS = ("init_from", "freeze")


def parity_pairs(prediction: dict[str, torch.Tensor], batch: Data) -> dict[str, torch.Tensor]:
    """Predicted and true values for a parity plot, detached on the CPU.

    Returns ``energy_per_atom [B, 2]`` (eV/atom) and, where labelled, ``forces [3N, 2]`` (eV/Å),
    column 0 predicted, column 1 true.
    """
    pairs: dict[str, torch.Tensor] = {}
    target = getattr(batch, K.ENERGY, None)
    if target is not None and K.ENERGY in prediction:
        n_atoms = atoms_per_structure(batch)
        pairs["energy_per_atom"] = torch.stack(
            [prediction[K.ENERGY].detach() / n_atoms, target.reshape(-1) / n_atoms], dim=1
        ).cpu()
    target = getattr(batch, K.FORCES, None)
    if target is not None and K.FORCES in prediction:
        pairs["forces"] = torch.stack(
            [prediction[K.FORCES].detach().reshape(-1), target.reshape(-1)], dim=1
        ).cpu()
    return pairs


def load_potential(
    checkpoint_path: str,
    map_location: str | torch.device = "cpu",
    model: nn.Module | None = None,
    *,
    trusted_modules: Sequence[str] | None = None,
) -> PotentialModule:
    """A :class:`PotentialModule` from a checkpoint written by ``equimol fit`` (or a Trainer).

    The weights are those stored as ``state_dict`` (the EMA weights when the EMA was on). A
    checkpoint of a run started from Python (not from a config) does not record how to build
    the model: pass an instance of the same architecture as ``model``.

    The file is read as :func:`equimol.train.checkpoints.load_checkpoint` reads it: verified
    against its checksums, loaded as data only (``weights_only=True``), and the classes it names
    are imported only from equimol, torch, the modules of ``EQUIMOL_TRUSTED_MODULES`` and
    ``trusted_modules``.

    Raises:
        FileNotFoundError: no such file.
        equimol.train.checkpoints.CheckpointError: (a ``ValueError``) the file is damaged, not
            plain data, or names a class outside the trusted modules.
    """
    from equimol.train.checkpoints import CheckpointError, check_class_paths, read_checkpoint_bytes, torch_load_plain

    raw = read_checkpoint_bytes(checkpoint_path)
    checkpoint = torch_load_plain(raw, checkpoint_path, map_location)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{checkpoint_path} is not a checkpoint of a Lightning module (it has no state_dict)")
    kwargs = {} if model is None else {"model": model}
    # (a file name such as test.ckpt would otherwise read as the importable name test.ckpt)
    check_class_paths(checkpoint, checkpoint_path, trusted_modules, ignore=[*kwargs, *_DATA_HPARAMS])
    try:
        module = PotentialModule.load_from_checkpoint(
            io.BytesIO(raw), map_location=map_location, weights_only=True, **kwargs
        )
    except TypeError as error:
        if model is None and "model" in str(error):
            raise TypeError(
                f"{checkpoint_path}: the checkpoint does not say how to build its model (it was not "
                "trained from a config); pass model=<an instance of the same architecture>"
            ) from error
        raise
    return module.eval()


def _training_sample(train_set: Any, size: int) -> list[Data]:
    """The first ``size`` structures of ``train_set``, without its augmentation (energies do not
    change under it, and drawing from its random generators here would shift the run's)."""
    if train_set is None:
        return []
    source, indices = getattr(train_set, "dataset", None), getattr(train_set, "indices", None)
    if source is not None and indices is not None:
        return [source[k] for k in list(indices)[:size]]
    return [train_set[k] for k in range(min(len(train_set), size))]
