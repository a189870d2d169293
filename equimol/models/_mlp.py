"""Multilayer perceptrons with a named activation, for the baseline models."""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["ACTIVATIONS", "activation_from_name", "mlp"]

# Smooth activations first: a potential needs continuous forces, so ReLU is allowed for
# comparison only (its forces are discontinuous).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def activation_from_name(name: str) -> nn.Module:
    """A new activation module from its name (one of ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


def mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str = "silu") -> nn.Sequential:
    """``Linear -> act -> ... -> Linear``: ``[..., n_in] -> [..., n_out]``.

    Args:
        n_in: input width.
        hidden: widths of the hidden layers (may be empty: a linear map).
        n_out: output width.
        activation: name in ``ACTIVATIONS``, applied after every hidden layer.
    """
    hidden = [int(h) for h in hidden]
    if any(h < 1 for h in hidden) or n_in < 1 or n_out < 1:
        raise ValueError(f"layer widths must be positive, got n_in={n_in}, hidden={hidden}, n_out={n_out}")
    activation_from_name(activation)  # fail early on a bad name
    layers: list[nn.Module] = []
    widths = [n_in, *hidden]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), activation_from_name(activation)]
    layers.append(nn.Linear(widths[-1], n_out))
    return nn.Sequential(*layers)
