"""Names of the fields of a graph and of a model's output, with their shapes and units.

Every part of equimol reads and writes these names, so they are defined once here.
``N`` is the number of atoms, ``E`` the number of directed edges, ``B`` the number of
structures in a batch. Units are ASE's.

Graph fields (one ``torch_geometric.data.Data`` per structure):

===================  ==============  =====================================================
name                 shape           meaning
===================  ==============  =====================================================
``pos``              [N, 3] float    Cartesian positions, Å
``z``                [N] int64       atomic numbers
``cell``             [1, 3, 3] float lattice vectors as rows, Å (zeros if not periodic)
``pbc``              [1, 3] bool     periodic along each lattice vector
``edge_index``       [2, E] int64    row 0: neighbour j (source), row 1: centre i (target)
``edge_shift``       [E, 3] float    integer lattice shifts S; edge vector is
                                     ``pos[j] - pos[i] + S @ cell``
``energy``           [1] float       total energy label, eV
``forces``           [N, 3] float    force labels, eV/Å
``stress``           [1, 3, 3] float stress label, eV/Å³ (ASE sign convention)
``batch``            [N] int64       structure index of each atom (added by PyG's Batch)
===================  ==============  =====================================================

Model outputs: ``energy`` [B] eV, ``forces`` [N, 3] eV/Å, ``stress`` [B, 3, 3] eV/Å³,
``per_atom_energy`` [N] eV.
"""

from __future__ import annotations

POS = "pos"
ATOMIC_NUMBERS = "z"
CELL = "cell"
PBC = "pbc"
EDGE_INDEX = "edge_index"
EDGE_SHIFT = "edge_shift"
ENERGY = "energy"
FORCES = "forces"
STRESS = "stress"
BATCH = "batch"
PER_ATOM_ENERGY = "per_atom_energy"

LABEL_KEYS = (ENERGY, FORCES, STRESS)

__all__ = [
    "POS",
    "ATOMIC_NUMBERS",
    "CELL",
    "PBC",
    "EDGE_INDEX",
    "EDGE_SHIFT",
    "ENERGY",
    "FORCES",
    "STRESS",
    "BATCH",
    "PER_ATOM_ENERGY",
    "LABEL_KEYS",
]
