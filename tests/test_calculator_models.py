"""The model an ``EquimolCalculator`` is given: the calculator computes with its own copy, so
the caller's model keeps its mode and dtype, and a neighbour-list cutoff shorter than the
model's is refused."""

from __future__ import annotations

import pytest
import torch

from equimol.calculator import EquimolCalculator
from equimol.models import PairNN

CUTOFF = 4.0


def test_calculator_leaves_the_callers_model_untouched_and_refuses_a_short_cutoff() -> None:
    model = PairNN(CUTOFF).train()
    calculator = EquimolCalculator(model, dtype=torch.float64)
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert calculator.backend.model is not model
    with pytest.raises(ValueError, match="smaller than the model's cutoff"):
        EquimolCalculator(model, cutoff=CUTOFF - 1.0)
