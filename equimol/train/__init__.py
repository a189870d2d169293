"""Training potentials: the Lightning module and data module, losses, metrics, callbacks.

Train from a config with ``equimol fit --config configs/quickstart.yaml``; in Python, build a
:class:`PotentialModule` around any potential and an :class:`AtomsDataModule`, and call
``pytorch_lightning.Trainer(inference_mode=False).fit(module, datamodule)``. To fine-tune,
start from a trained model with ``init_from`` (or :func:`load_pretrained_weights` in a training
loop of your own).
"""

from equimol.train.callbacks import EMA, LossCurve, ParityPlot
from equimol.train.datamodule import AtomsDataModule
from equimol.train.finetune import FinetuneReport, freeze_parameters, load_pretrained_weights
from equimol.train.losses import PotentialLoss
from equimol.train.metrics import PotentialMetrics
from equimol.train.module import PotentialModule, load_potential

__all__ = [
    "PotentialModule",
    "AtomsDataModule",
    "PotentialLoss",
    "PotentialMetrics",
    "EMA",
    "ParityPlot",
    "LossCurve",
    "load_potential",
    "load_pretrained_weights",
    "freeze_parameters",
    "FinetuneReport",
]
