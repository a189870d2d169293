"""A committee of potentials: several trained models run as one backend, whose spread is an
uncertainty.

Models trained alike but from different seeds (or splits) agree where the training data
taught them and disagree elsewhere, so the spread of their predictions flags structures a
model should not be trusted on (as the committees of MACE's and NequIP's users).
:class:`Committee` runs every member on the same radius graph and returns the mean
prediction beside the standard deviation over the members:

==============  ===============  =============================================================
key             shape            meaning
==============  ===============  =============================================================
``energy``      ``[B]``          mean energy over the members, eV
``forces``      ``[N, 3]``       mean force components, eV/Å
``stress``      ``[B, 3, 3]``    mean stress, eV/Å³ (when asked)
``energy_std``  ``[B]``          standard deviation of the members' energies, eV
``forces_std``  ``[N, 3]``       standard deviation of each force component, eV/Å
``stress_std``  ``[B, 3, 3]``    standard deviation of each stress component, eV/Å³
==============  ===============  =============================================================

The estimator is ``sqrt(sum_m (x_m - mean)^2 / (M - ddof))`` over the ``M`` members, with
``ddof=0`` by default: the spread of the committee itself (NumPy's ``np.std`` default, and
what MACE's committee calculator reports). ``ddof=1`` gives the sample standard deviation, an
estimate of the spread of all models that could have been trained, larger by
``sqrt(M / (M - 1))``; rankings of structures by uncertainty are the same either way.

:func:`equimol.engines.load_backend` given a list of sources loads each and returns their
:class:`Committee`; ``EquimolCalculator([ckpt1, ckpt2, ...])`` and the MD engines take such a
list the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.engines.base import InferenceBackend

__all__ = ["Committee", "ENERGY_STD", "FORCES_STD", "STRESS_STD"]

#: Output keys of the committee's spread: ``energy_std [B]`` eV, ``forces_std [N, 3]`` eV/Å,
#: ``stress_std [B, 3, 3]`` eV/Å³.
ENERGY_STD, FORCES_STD, STRESS_STD = "energy_std", "forces_std", "stress_std"

#: Outputs averaged over the members (when every member gives them).
_AVERAGED = (K.ENERGY, K.FORCES, K.STRESS, K.PER_ATOM_ENERGY)
#: Outputs whose spread is given, and the key of that spread.
_SPREAD = {K.ENERGY: ENERGY_STD, K.FORCES: FORCES_STD, K.STRESS: STRESS_STD}


class Committee(InferenceBackend):
    """Several potentials as one backend: the mean of their predictions and its spread.

    Args:
        members: at least two loaded backends (:func:`~equimol.engines.load_backend` of each
            source; ``load_backend([a, b, ...])`` does both steps).
        names: a name per member for messages (its file); default: its class and position.
        ddof: delta degrees of freedom of the standard deviation (0: the committee's own
            spread; 1: the sample standard deviation; see the module's docstring).

    The members must read graphs of the same cutoff and compute in the same dtype on the same
    device; an error names the member that does not. The committee knows the elements every
    member knows (in the first member's order); a structure with another element is an error
    naming the element and the members that do not know it.

    Attributes:
        members: the members' backends.
        names: a name per member.
        ddof: as given.
    """

    def __init__(self, members: Sequence[InferenceBackend], names: Sequence[str] | None = None, *,
                 ddof: int = 0) -> None:
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a committee needs at least two members, got {len(members)}")
        for position, member in enumerate(members):
            if not isinstance(member, InferenceBackend):
                raise TypeError(
                    f"committee member {position} is a {type(member).__name__}, not a loaded backend; "
                    "equimol.engines.load_backend([...]) loads checkpoints, packages and models"
                )
        if not (isinstance(ddof, int) and 0 <= ddof < len(members)):
            raise ValueError(f"ddof must be an integer from 0 to {len(members) - 1} for {len(members)} members, got {ddof!r}")
        self.names = list(names) if names is not None else [
            f"{position} ({type(member).__name__})" for position, member in enumerate(members)]
        if len(self.names) != len(members):
            raise ValueError(f"{len(self.names)} names for {len(members)} committee members")
        self.members: list[InferenceBackend] = members
        first, name = self.members[0], self.names[0]
        for member, other in zip(self.members[1:], self.names[1:]):
            if abs(member.cutoff - first.cutoff) > 1e-9:
                raise ValueError(
                    f"committee member {other} reads graphs of cutoff {member.cutoff} Å, but {name} of "
                    f"{first.cutoff} Å; every member must have the same cutoff"
                )
            if member.dtype != first.dtype:
                raise ValueError(
                    f"committee member {other} computes in {member.dtype}, but {name} in {first.dtype}; pass "
                    "dtype= (--dtype on the command line) to run every member in one dtype"
                )
            if member.device != first.device:
                raise ValueError(f"committee member {other} computes on {member.device}, but {name} on {first.device}")
        common = set.intersection(*(set(member.atomic_numbers) for member in self.members))
        elements = tuple(z for z in first.atomic_numbers if z in common)
        if not elements:
            raise ValueError(f"the committee members {', '.join(self.names)} have no element in common")
        self.ddof = ddof
        super().__init__(first.cutoff, elements, first.dtype, first.device, "the committee")

    def compute(self, graph: Data, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        """The members' mean ``energy [B]``, ``forces [N, 3]`` (and ``stress [B, 3, 3]``) and
        their standard deviations ``energy_std [B]``, ``forces_std [N, 3]`` (and
        ``stress_std [B, 3, 3]``), in eV, eV/Å and eV/Å³ (see the module's docstring)."""
        self._check_elements(graph.z)
        outputs = [member.compute(graph, compute_stress=compute_stress) for member in self.members]
        result: dict[str, torch.Tensor] = {}
        for key in _AVERAGED:
            if not all(key in out for out in outputs):
                continue
            # in float64: the spread of large float32 energies would lose digits to their mean
            stacked = torch.stack([out[key] for out in outputs]).double()
            result[key] = stacked.mean(dim=0).to(self.dtype)
            if key in _SPREAD:
                result[_SPREAD[key]] = stacked.std(dim=0, correction=self.ddof).to(self.dtype)
        return result

    def _check_elements(self, z: torch.Tensor) -> None:
        """ValueError naming the elements of ``z`` some member does not know, and those members."""
        present = set(torch.unique(z).tolist())
        unknown = sorted(present - set(self.atomic_numbers))
        if unknown:
            lacking = "; ".join(
                f"{z} to {', '.join(name for name, member in zip(self.names, self.members) if z not in member.atomic_numbers)}"
                for z in unknown
            )
            raise ValueError(
                f"atomic number(s) {unknown} not known to every committee member ({lacking}); the committee "
                f"knows {list(self.atomic_numbers)}"
            )
