"""The ASE calculator, importable as ``equimol.calculator.EquimolCalculator``.

It lives in :mod:`equimol.engines.ase_calculator`, beside the inference backends it runs on.
"""

from equimol.engines.ase_calculator import EquimolCalculator

__all__ = ["EquimolCalculator"]
