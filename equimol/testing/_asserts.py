"""Assertion forms of the physics checks, and :func:`check_model`, which runs them all.

Every ``assert_*`` function runs the matching ``*_error`` function and raises
``AssertionError`` with the measured error when it exceeds ``tol`` (default: see
:func:`default_tolerance`, chosen from the dtype the model was evaluated in).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.models.base import Potential
from equimol.testing._batching import batch_consistency_error, gradient_leak_error
from equimol.testing._common import (
    InvarianceReport,
    Model,
    Structures,
    as_structures,
    default_tolerance,
    prepared,
    structures_dtype,
)
from equimol.testing._derivatives import force_finite_difference_error, stress_finite_difference_error
from equimol.testing._smoothness import cutoff_smoothness_error
from equimol.testing._symmetry import (
    permutation_invariance_error,
    rotation_invariance_error,
    translation_invariance_error,
)

__all__ = [
    "CHECKS",
    "assert_rotation_invariant",
    "assert_translation_invariant",
    "assert_permutation_invariant",
    "assert_forces_match_finite_differences",
    "assert_stress_matches_finite_differences",
    "assert_batch_consistent",
    "assert_no_gradient_leak",
    "assert_smooth_at_cutoff",
    "check_model",
]

#: The checks :func:`check_model` knows, in the order it runs them.
CHECKS = (
    "rotation",
    "reflection",
    "translation",
    "permutation",
    "forces_fd",
    "stress_fd",
    "batch",
    "gradient_leak",
    "cutoff_smoothness",
)


def _fail_if_above(name: str, value: float, tol: float, dtype: torch.dtype, meaning: str) -> None:
    if not value <= tol:  # also catches NaN
        raise AssertionError(f"{name}: error {value:.3e} exceeds tolerance {tol:.1e} ({dtype}; {meaning})")


def _assert_report(name: str, report: InvarianceReport, tol: float | None, dtype: torch.dtype) -> None:
    tol = default_tolerance(dtype) if tol is None else tol
    _fail_if_above(f"{name} (energy)", report.energy_error, tol, dtype, "relative to max(|E|, 1 eV)")
    if report.force_error is not None:
        _fail_if_above(f"{name} (forces)", report.force_error, tol, dtype, "relative to max(|F|, 1 eV/Å)")


def _dtype_of(data: Structures) -> torch.dtype:
    return structures_dtype(as_structures(data))


def assert_rotation_invariant(
    model: Model, data: Structures, tol: float | None = None, **kwargs: Any
) -> InvarianceReport:
    """:func:`rotation_invariance_error` below ``tol``; ``reflections=True`` checks O(3)."""
    report = rotation_invariance_error(model, data, **kwargs)
    name = "reflection invariance" if kwargs.get("reflections") else "rotation invariance"
    _assert_report(name, report, tol, _dtype_of(data))
    return report


def assert_translation_invariant(
    model: Model, data: Structures, tol: float | None = None, **kwargs: Any
) -> InvarianceReport:
    """:func:`translation_invariance_error` below ``tol``."""
    report = translation_invariance_error(model, data, **kwargs)
    _assert_report("translation invariance", report, tol, _dtype_of(data))
    return report


def assert_permutation_invariant(
    model: Model, data: Structures, tol: float | None = None, **kwargs: Any
) -> InvarianceReport:
    """:func:`permutation_invariance_error` below ``tol``."""
    report = permutation_invariance_error(model, data, **kwargs)
    _assert_report("permutation invariance", report, tol, _dtype_of(data))
    return report


def assert_forces_match_finite_differences(
    model: Model, data: Structures, tol: float | None = None, **kwargs: Any
) -> float:
    """:func:`force_finite_difference_error` below ``tol``."""
    dtype = kwargs.get("dtype", torch.float64) or _dtype_of(data)
    error = force_finite_difference_error(model, data, **kwargs)
    tol = default_tolerance(dtype, "finite_difference") if tol is None else tol
    _fail_if_above("forces vs finite differences", error, tol, dtype, "relative to max(|F|, 1 eV/Å)")
    return error


def assert_stress_matches_finite_differences(
    model: Model, data: Structures, tol: float | None = None, **kwargs: Any
) -> float:
    """:func:`stress_finite_difference_error` below ``tol``."""
    dtype = kwargs.get("dtype", torch.float64) or _dtype_of(data)
    error = stress_finite_difference_error(model, data, **kwargs)
    tol = default_tolerance(dtype, "finite_difference") if tol is None else tol
    _fail_if_above("stress vs finite differences", error, tol, dtype, "relative to max(|S|, 1 eV/Å³)")
    return error


def assert_batch_consistent(model: Model, structures: Structures, tol: float | None = None) -> InvarianceReport:
    """:func:`batch_consistency_error` below ``tol``."""
    report = batch_consistency_error(model, structures)
    _assert_report("batch consistency", report, tol, _dtype_of(structures))
    return report


def assert_no_gradient_leak(model: Model, structures: Structures, tol: float | None = None) -> float:
    """:func:`gradient_leak_error` below ``tol``."""
    dtype = _dtype_of(structures)
    error = gradient_leak_error(model, structures)
    tol = default_tolerance(dtype) if tol is None else tol
    _fail_if_above("gradient leak between structures", error, tol, dtype, "relative to max(|dE_a/dpos_a|, 1 eV/Å)")
    return error


def assert_smooth_at_cutoff(
    model: Model, cutoff: float, species: Sequence[int], tol: float | None = None, **kwargs: Any
) -> InvarianceReport:
    """:func:`cutoff_smoothness_error` below ``tol``."""
    report = cutoff_smoothness_error(model, cutoff, species, **kwargs)
    _assert_report("smoothness at the cutoff", report, tol, kwargs.get("dtype", torch.float64))
    return report


def _capabilities(model: Model, structures: list[Data]) -> tuple[bool, bool]:
    """Whether the model returns forces, and stress on a periodic structure."""
    periodic = [s for s in structures if bool(s[K.PBC].reshape(-1).all())]
    with prepared(model, structures_dtype(structures)) as evaluate:
        has_forces = K.FORCES in evaluate(structures[0], forces=True)
        has_stress = False
        if periodic and evaluate.takes_stress:
            has_stress = K.STRESS in evaluate(periodic[0], forces=False, stress=True)
    return has_forces, has_stress


def check_model(
    model: Model,
    structures: Structures,
    checks: Iterable[str] | None = None,
    *,
    cutoff: float | None = None,
    seed: int | None = 0,
    n_trials: int = 2,
    planar: bool = False,
    strict: bool = False,
) -> dict[str, float]:
    """Run a set of physics checks on a model and return the measured errors.

    Args:
        model: ``model(data, compute_forces=True, compute_stress=False) -> {"energy": [B], ...}``.
        structures: the structures to check on (``Data`` from ``atoms_to_graph``, a list, or
            a ``Batch``); use a few, with several species and a periodic one if the model
            handles cells.
        checks: names from :data:`CHECKS`. ``None`` runs every check that applies: force
            checks if the model returns forces, ``stress_fd`` if it returns a stress and a
            structure is periodic, ``gradient_leak`` with two structures or more,
            ``cutoff_smoothness`` if ``cutoff`` is given or the model is an equimol
            :class:`~equimol.models.Potential` that reads a radius graph (``cutoff > 0``). A check named explicitly that cannot run raises ``ValueError``.
        cutoff: the graph radius, Å, for ``cutoff_smoothness`` (species from ``structures``).
        seed: seed of the random operations.
        n_trials: random operations per structure for the symmetry checks.
        planar: symmetry operations that keep ``z = 0`` (2D systems).
        strict: raise ``AssertionError`` listing every error above its default tolerance.

    Returns:
        ``{"rotation/energy": ..., "rotation/forces": ..., "forces_fd": ..., ...}``: relative
        errors as defined by each ``*_error`` function; ``/forces`` entries are absent for a
        model without forces.
    """
    items = as_structures(structures)
    dtype = structures_dtype(items)
    has_forces, has_stress = _capabilities(model, items)
    if cutoff is None and isinstance(model, Potential) and model.cutoff > 0:
        cutoff = model.cutoff
    applicable = {
        "forces_fd": (has_forces, "the model returns no forces"),
        "stress_fd": (has_stress, "no fully periodic structure, or the model returns no stress"),
        "gradient_leak": (len(items) >= 2, "it needs at least two structures"),
        "cutoff_smoothness": (cutoff is not None, "no cutoff given and the model has no 'cutoff'"),
    }
    if checks is None:
        selected = [name for name in CHECKS if applicable.get(name, (True, ""))[0]]
    else:
        selected = list(checks)
        for name in selected:
            if name not in CHECKS:
                raise ValueError(f"unknown check {name!r}; choose from {CHECKS}")
            ok, reason = applicable.get(name, (True, ""))
            if not ok:
                raise ValueError(f"check {name!r} cannot run: {reason}")

    report: dict[str, float] = {}
    failures: list[str] = []

    def record(name: str, value: InvarianceReport | float, tol: float) -> None:
        parts = (
            {f"{name}/energy": value.energy_error, f"{name}/forces": value.force_error}
            if isinstance(value, InvarianceReport)
            else {name: value}
        )
        for key, number in parts.items():
            if number is None:
                continue
            report[key] = float(number)
            if not number <= tol:
                failures.append(f"{key} = {number:.3e} > {tol:.1e}")

    exact = default_tolerance(dtype)
    symmetric = {"n_trials": n_trials, "seed": seed}
    for name in selected:
        if name in ("rotation", "reflection"):
            value = rotation_invariance_error(
                model, items, reflections=name == "reflection", planar=planar, **symmetric
            )
            record(name, value, exact)
        elif name == "translation":
            record(name, translation_invariance_error(model, items, planar=planar, **symmetric), exact)
        elif name == "permutation":
            record(name, permutation_invariance_error(model, items, **symmetric), exact)
        elif name == "forces_fd":
            record(name, force_finite_difference_error(model, items, seed=seed),
                   default_tolerance(torch.float64, "finite_difference"))
        elif name == "stress_fd":
            record(name, stress_finite_difference_error(model, items),
                   default_tolerance(torch.float64, "finite_difference"))
        elif name == "batch":
            record(name, batch_consistency_error(model, items), exact)
        elif name == "gradient_leak":
            record(name, gradient_leak_error(model, items), exact)
        elif name == "cutoff_smoothness":
            species = sorted({int(z) for s in items for z in s[K.ATOMIC_NUMBERS].tolist()})
            record(name, cutoff_smoothness_error(model, cutoff, species, dtype=dtype), exact)
    if strict and failures:
        raise AssertionError(f"physics checks failed ({dtype}): " + "; ".join(failures))
    return report
