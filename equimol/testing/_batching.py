"""Batching checks: a structure's results do not depend on the other structures in its batch."""

from __future__ import annotations

import torch
from torch_geometric.data import Batch

from equimol import _keys as K
from equimol.testing._common import (
    InvarianceReport,
    Model,
    Structures,
    as_structures,
    prepared,
    relative,
    structures_dtype,
    without_labels,
)

__all__ = ["batch_consistency_error", "gradient_leak_error"]


def batch_consistency_error(model: Model, structures: Structures) -> InvarianceReport:
    """Largest difference between results in a PyG ``Batch`` and for each structure alone.

    Args:
        model: ``model(data, compute_forces=True) -> {"energy": [B], "forces"?: [N, 3]}``.
        structures: the structures to batch together (a list of ``Data``, or a ``Batch``).

    Returns:
        :class:`InvarianceReport` with ``|E_batch - E_alone| / max(|E_alone|, 1 eV)`` and
        ``max |F_batch - F_alone| / max(max |F_alone|, 1 eV/Å)``, the largest over structures.
    """
    items = [without_labels(s) for s in as_structures(structures)]
    batch = Batch.from_data_list(items)
    energy_error, force_error = 0.0, 0.0
    with prepared(model, structures_dtype(items)) as evaluate:
        together = evaluate(batch, forces=True)
        has_forces = K.FORCES in together
        for index, item in enumerate(items):
            alone = evaluate(item, forces=has_forces)
            energy_error = max(
                energy_error,
                relative(abs(together[K.ENERGY][index] - alone[K.ENERGY][0]), alone[K.ENERGY].abs().max()),
            )
            if has_forces:
                start, stop = int(batch.ptr[index]), int(batch.ptr[index + 1])
                difference = (together[K.FORCES][start:stop] - alone[K.FORCES]).abs().max()
                force_error = max(force_error, relative(difference, alone[K.FORCES].abs().max()))
    return InvarianceReport(energy_error, force_error if has_forces else None)


def gradient_leak_error(model: Model, structures: Structures) -> float:
    """Largest gradient of one structure's energy with respect to another's positions.

    In a batch, ``dE_a / dpos_b`` must vanish for ``a != b``; anything else means the model
    mixes structures (batch-wide normalisation, a shared message, a wrong scatter index).

    Args:
        model: ``model(data) -> {"energy": [B]}``, differentiable in ``data.pos``.
        structures: at least two structures (a list of ``Data``, or a ``Batch``).

    Returns:
        ``max_a max_{b != a} |dE_a/dpos_b| / max(max |dE_a/dpos_a|, 1 eV/Å)``.
    """
    items = [without_labels(s) for s in as_structures(structures)]
    if len(items) < 2:
        raise ValueError("gradient_leak_error needs at least two structures")
    batch = Batch.from_data_list(items)
    error = 0.0
    with prepared(model, structures_dtype(items)) as evaluate:
        batch = batch.to(evaluate.device)
        pos = batch[K.POS].detach().requires_grad_(True)
        batch[K.POS] = pos
        with torch.enable_grad():
            energy = evaluate.raw(batch)[K.ENERGY].reshape(-1)
            for index in range(len(items)):
                (gradient,) = torch.autograd.grad(
                    energy[index], pos, retain_graph=index + 1 < len(items), allow_unused=True
                )
                if gradient is None:
                    continue
                own = batch[K.BATCH] == index
                gradient = gradient.detach().abs()
                leak = gradient[~own].max()
                error = max(error, relative(leak, gradient[own].max() if own.any() else 0.0))
    return error
