"""Physics checks for any potential: symmetries, derivatives, batching, smoothness.

Each check takes a model following the interface ``model(data, compute_forces=True,
compute_stress=False) -> {"energy": [B], "forces": [N, 3], "stress": [B, 3, 3]}`` (a model
that returns energies only passes the energy parts) and structures built by
``equimol.data.atoms_to_graph``, and returns the error it measured, so a study can report
it. Each has an ``assert_*`` form with default tolerances per dtype, and :func:`check_model`
runs them all::

    from equimol.testing import assert_rotation_invariant, check_model

    assert_rotation_invariant(model, structures)          # raises AssertionError if not
    report = check_model(model, structures, cutoff=5.0)   # {"rotation/energy": 3e-16, ...}

Errors are relative with a floor of one unit, ``|difference| / max(scale, 1)`` in eV, eV/Å
or eV/Å³. Models are evaluated in eval mode, in the dtype of the structures (a cast copy is
used when the model's dtype differs); finite-difference checks run in float64.
"""

from equimol.testing._asserts import (
    CHECKS,
    assert_batch_consistent,
    assert_forces_match_finite_differences,
    assert_no_gradient_leak,
    assert_permutation_invariant,
    assert_rotation_invariant,
    assert_smooth_at_cutoff,
    assert_stress_matches_finite_differences,
    assert_translation_invariant,
    check_model,
)
from equimol.testing._batching import batch_consistency_error, gradient_leak_error
from equimol.testing._common import InvarianceReport, default_tolerance
from equimol.testing._derivatives import force_finite_difference_error, stress_finite_difference_error
from equimol.testing._smoothness import cutoff_smoothness_error
from equimol.testing._symmetry import (
    permutation_invariance_error,
    rotation_invariance_error,
    translation_invariance_error,
)

__all__ = [
    "InvarianceReport",
    "default_tolerance",
    "rotation_invariance_error",
    "translation_invariance_error",
    "permutation_invariance_error",
    "force_finite_difference_error",
    "stress_finite_difference_error",
    "batch_consistency_error",
    "gradient_leak_error",
    "cutoff_smoothness_error",
    "assert_rotation_invariant",
    "assert_translation_invariant",
    "assert_permutation_invariant",
    "assert_forces_match_finite_differences",
    "assert_stress_matches_finite_differences",
    "assert_batch_consistent",
    "assert_no_gradient_leak",
    "assert_smooth_at_cutoff",
    "check_model",
    "CHECKS",
]
