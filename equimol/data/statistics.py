"""Statistics of a training split that set a model's shifts and scales.

:func:`compute_statistics` reads graphs once and returns a :class:`DatasetStatistics`, which a
model receives through ``Potential.set_statistics``: per-species reference energies, the mean
and spread of what is left of the energy per atom, the force RMS and the mean number of
neighbours. Compute it on the training split only, so nothing leaks from validation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
from torch_geometric.data import Data

from equimol import _keys as K

__all__ = ["DatasetStatistics", "compute_statistics"]


@dataclass(frozen=True)
class DatasetStatistics:
    """Summary numbers of a set of structures.

    Attributes:
        species: sorted atomic numbers present.
        reference_energies: per-species energies, eV, fitted so that a structure's energy
            is close to the sum of its atoms' references (see :func:`compute_statistics`).
            Empty when the structures carry no energy.
        energy_per_atom_mean: mean of (energy - sum of references) / number of atoms,
            eV/atom, or None without energies.
        energy_per_atom_std: standard deviation of that residual, eV/atom, or None.
        force_rms: root mean square of all force components, eV/Å, or None without forces.
        avg_num_neighbors: directed edges per atom (mean in-degree of the radius graph).
        num_structures: number of structures.
        num_atoms: total number of atoms.
    """

    species: list[int]
    reference_energies: dict[int, float] = field(default_factory=dict)
    energy_per_atom_mean: float | None = None
    energy_per_atom_std: float | None = None
    force_rms: float | None = None
    avg_num_neighbors: float = 0.0
    num_structures: int = 0
    num_atoms: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON- and YAML-serialisable; reference-energy keys are ints,
        which JSON writes as strings and :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DatasetStatistics:
        """Inverse of :meth:`to_dict`; accepts string keys for the reference energies.

        Raises:
            ValueError: unknown or missing fields.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown DatasetStatistics fields {sorted(unknown)}; known: {sorted(names)}")
        if "species" not in values:
            raise ValueError("DatasetStatistics needs at least 'species'")
        values = dict(values)
        values["species"] = [int(z) for z in values["species"]]
        values["reference_energies"] = {
            int(z): float(e) for z, e in (values.get("reference_energies") or {}).items()
        }
        return cls(**values)


def compute_statistics(graphs: Iterable[Data]) -> DatasetStatistics:
    """Statistics of graphs (``Data`` or PyG ``Batch`` objects, e.g. a data set or a loader).

    Reference energies solve the least-squares problem ``E_s ≈ sum_z n_sz ref_z`` (``n_sz``
    the count of species ``z`` in structure ``s``) with ``numpy.linalg.lstsq`` and its
    default ``rcond``. When the counts do not determine every reference (for example every
    structure has the same composition), this gives the minimum-norm solution, whose sum
    over any of those compositions is the mean energy: the residual then has mean zero.

    Args:
        graphs: structures with ``z``, ``edge_index`` and optionally ``energy`` [1] eV and
            ``forces`` [N, 3] eV/Å. Energies (and forces) must be on all or none of them.

    Raises:
        ValueError: no structures, or energies/forces on some structures but not others.
    """
    counts: list[dict[int, int]] = []
    energies: list[float] = []
    sizes: list[int] = []
    force_square_sum = 0.0
    force_components = 0
    with_forces = 0
    num_edges = 0
    for item in graphs:
        for data in _structures(item):
            z = data[K.ATOMIC_NUMBERS].detach().cpu().numpy()
            species, count = np.unique(z, return_counts=True)
            counts.append(dict(zip(species.tolist(), count.tolist(), strict=True)))
            sizes.append(len(z))
            num_edges += int(data[K.EDGE_INDEX].shape[1])
            energy = data.get(K.ENERGY)
            if energy is not None:
                energies.append(float(energy.detach().double().sum()))
            forces = data.get(K.FORCES)
            if forces is not None:
                forces = forces.detach().double()
                force_square_sum += float((forces**2).sum())
                force_components += forces.numel()
                with_forces += 1

    n_structures = len(counts)
    if n_structures == 0:
        raise ValueError("compute_statistics got no structures; is the training split empty?")
    for name, n_labelled in ((K.ENERGY, len(energies)), (K.FORCES, with_forces)):
        if 0 < n_labelled < n_structures:
            raise ValueError(
                f"{name} labels on {n_labelled} of {n_structures} structures; "
                "statistics need them on all structures or on none"
            )

    species = sorted({z for c in counts for z in c})
    reference: dict[int, float] = {}
    mean = std = None
    if energies:
        design = np.array([[c.get(z, 0) for z in species] for c in counts], dtype=np.float64)
        target = np.asarray(energies, dtype=np.float64)
        solution, *_ = np.linalg.lstsq(design, target, rcond=None)
        reference = {z: float(e) for z, e in zip(species, solution, strict=True)}
        residual_per_atom = (target - design @ solution) / np.asarray(sizes, dtype=np.float64)
        mean = float(residual_per_atom.mean())
        std = float(residual_per_atom.std())
    force_rms = math.sqrt(force_square_sum / force_components) if force_components else None
    return DatasetStatistics(
        species=species,
        reference_energies=reference,
        energy_per_atom_mean=mean,
        energy_per_atom_std=std,
        force_rms=force_rms,
        avg_num_neighbors=num_edges / sum(sizes),
        num_structures=n_structures,
        num_atoms=int(sum(sizes)),
    )


def _structures(item: Data) -> Iterable[Data]:
    """The single structures of a ``Data`` (itself) or a ``Batch`` (its members)."""
    if getattr(item, K.BATCH, None) is not None and hasattr(item, "to_data_list"):
        return item.to_data_list()
    return (item,)
