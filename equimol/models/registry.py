"""Short names for equimol's models, so a config or a study can name them.

A config can always give a full import path (``class_path: my_package.MyModel``); the
registry adds the short names of equimol's own classes and lets users register theirs.
Registration is explicit: a :class:`ModelRegistry` instance is a plain mapping that the caller
owns, and :data:`MODELS` holds equimol's built-in models (it is never modified by equimol).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from torch import nn

__all__ = ["ModelRegistry", "MODELS", "resolve_model_class"]


class ModelRegistry(Mapping[str, type[nn.Module]]):
    """A name -> model class mapping with lazy imports.

    Args:
        entries: name -> ``"module:ClassName"`` import strings or classes.
    """

    def __init__(self, entries: Mapping[str, str | type[nn.Module]] | None = None):
        self._entries: dict[str, str | type[nn.Module]] = dict(entries or {})

    def register(self, name: str, cls: str | type[nn.Module]) -> None:
        """Add ``name`` (an error if it is taken)."""
        if name in self._entries:
            raise ValueError(f"model name {name!r} is already registered")
        self._entries[name] = cls

    def __getitem__(self, name: str) -> type[nn.Module]:
        if name not in self._entries:
            raise KeyError(
                f"unknown model {name!r}; known models: {sorted(self._entries)} "
                "(or give a full import path such as 'my_package.MyModel')"
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


MODELS = ModelRegistry(
    {
        "EquivariantPotential": "equimol.models.equivariant:EquivariantPotential",
        "FeatureMLP": "equimol.models.feature_mlp:FeatureMLP",
        "PairNN": "equimol.models.pair:PairNN",
        "LinearModel": "equimol.models.linear:LinearModel",
        "CoordinateVAE": "equimol.models.vae:CoordinateVAE",
        "DistanceMatrixVAE": "equimol.models.vae:DistanceMatrixVAE",
        "DensityGridVAE": "equimol.models.vae:DensityGridVAE",
        "InvariantVAE": "equimol.models.vae:InvariantVAE",
    }
)


def resolve_model_class(name: str, registry: Mapping[str, type[nn.Module]] = MODELS) -> type[nn.Module]:
    """The class for a short registry name or a dotted import path (``package.module.Class``)."""
    if name in registry:
        return registry[name]
    module, _, attribute = name.rpartition(".")
    if not module:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(registry)}")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise KeyError(f"cannot import model class {name!r}: {error}") from error
