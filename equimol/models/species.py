"""Elements a potential knows, and the one mapping from atomic numbers to species indices.

A potential declares its elements once, as atomic numbers (``atomic_numbers[k]`` is species
``k``). :class:`SpeciesIndex` turns atomic numbers into those indices and raises on any element
the model was not built for; the eager models, the compiled packages and the engines all use it,
so an unknown element is an error everywhere, never a neighbouring index.
"""

from __future__ import annotations

from collections.abc import Sequence

import ase.data
import torch

__all__ = ["MAX_ATOMIC_NUMBER", "ALL_ELEMENTS", "SpeciesIndex", "species_to_atomic_numbers"]

MAX_ATOMIC_NUMBER = 118

ALL_ELEMENTS: tuple[int, ...] = tuple(range(1, MAX_ATOMIC_NUMBER + 1))
"""Every element: the ``atomic_numbers`` of a model that treats all elements alike."""


def species_to_atomic_numbers(species: Sequence[int | str]) -> tuple[int, ...]:
    """Atomic numbers of ``species`` given as numbers or chemical symbols (``"H"``, ``8``...).

    Raises:
        ValueError: an unknown symbol, a number outside 1..118, an element listed twice, or
            an empty list.
    """
    numbers = []
    for s in species:
        if isinstance(s, str) and not s.isdigit():
            if s not in ase.data.atomic_numbers or ase.data.atomic_numbers[s] == 0:
                raise ValueError(f"unknown chemical symbol {s!r} in species {list(species)}")
            numbers.append(int(ase.data.atomic_numbers[s]))
        else:
            z = int(s)
            if not 1 <= z <= MAX_ATOMIC_NUMBER:
                raise ValueError(f"atomic number {z} in species {list(species)} is not in 1..{MAX_ATOMIC_NUMBER}")
            numbers.append(z)
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"species {list(species)} lists an element twice")
    if not numbers:
        raise ValueError("species must list at least one element")
    return tuple(numbers)


class SpeciesIndex:
    """Atomic numbers ``z [N]`` -> species indices ``[N]`` int64 of ``atomic_numbers``.

    Args:
        atomic_numbers: the elements, in species order.
        owner: named in the error message (a model class or a file).

    The lookup table is kept per device, so the call costs one indexing operation and one
    check. Unknown elements raise ``ValueError`` naming them and the known ones.
    """

    def __init__(self, atomic_numbers: Sequence[int], owner: str = "this model") -> None:
        self.atomic_numbers = tuple(int(z) for z in atomic_numbers)
        self.owner = owner
        table = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        table[list(self.atomic_numbers)] = torch.arange(len(self.atomic_numbers))
        self._tables = {torch.device("cpu"): table}

    def _table(self, device: torch.device) -> torch.Tensor:
        table = self._tables.get(device)
        if table is None:
            table = self._tables[device] = self._tables[torch.device("cpu")].to(device)
        return table

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        table = self._table(z.device)
        types = table[z.clamp(0, MAX_ATOMIC_NUMBER)]
        bad = (types < 0) | (z < 0) | (z > MAX_ATOMIC_NUMBER)
        if bool(bad.any()):
            unknown = sorted(set(z[bad].tolist()))
            raise ValueError(
                f"atomic number(s) {unknown} not known to {self.owner}; it was built for "
                f"species {list(self.atomic_numbers)}"
            )
        return types
