"""The model registry resolves short names and import paths, and names unknown models."""

from __future__ import annotations

import pytest
from torch import nn

from equimol.models import MODELS, EquivariantPotential, ModelRegistry, PairNN, resolve_model_class


def test_every_registered_name_resolves_to_a_module_class() -> None:
    for name in MODELS:
        cls = MODELS[name]
        assert issubclass(cls, nn.Module), name
        assert cls.__name__ == name


def test_short_names_and_import_paths_give_the_same_class() -> None:
    assert resolve_model_class("PairNN") is PairNN
    assert resolve_model_class("equimol.models.equivariant.EquivariantPotential") is EquivariantPotential


def test_unknown_model_is_named_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="PairNNN.*EquivariantPotential"):
        resolve_model_class("PairNNN")
    with pytest.raises(KeyError, match="cannot import"):
        resolve_model_class("no_such_package.Model")


def test_a_user_registry_takes_their_own_class_and_refuses_duplicates() -> None:
    class MyModel(nn.Module):
        pass

    registry = ModelRegistry({"MyModel": MyModel})
    assert resolve_model_class("MyModel", registry) is MyModel
    with pytest.raises(ValueError, match="already registered"):
        registry.register("MyModel", MyModel)
