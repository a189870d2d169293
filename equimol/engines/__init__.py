"""Running a trained potential: one inference interface and the engines built on it.

:func:`load_backend` turns a checkpoint, a ``.pt2`` package or a model object into an
:class:`InferenceBackend` (:class:`Eager`, :class:`Compiled` or :class:`Package`);
:class:`EquimolCalculator` is the ASE engine on it.
"""

from equimol.engines.ase_calculator import EquimolCalculator
from equimol.engines.backends import Compiled, Eager, InferenceBackend, Package, load_backend, load_model

__all__ = [
    "InferenceBackend",
    "Eager",
    "Compiled",
    "Package",
    "load_backend",
    "load_model",
    "EquimolCalculator",
]
