"""FusedTensorProduct and the ``tensor_product="fused"`` path of the convolution and potential.

The fused product must equal e3nn's ``"uvu"`` ``o3.TensorProduct`` (values and gradients) for
every irreps combination the potential builds, and a potential using it must keep its physics:
symmetries, finite-difference forces and stress, batching, TorchScript export.
"""

from __future__ import annotations

from contextlib import contextmanager

import ase
import numpy as np
import pytest
import torch
from e3nn import o3

from equimol.data.graph import atoms_to_graph
from equimol.models.equivariant import EquivariantPotential
from equimol.nn import FusedTensorProduct, InteractionBlock, TensorProductConv
from equimol.testing import check_model

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules in ``dtype``: e3nn's constants are then exact in float64, not rounded float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def hidden_irreps(channels: int, l_max: int, parity: bool) -> o3.Irreps:
    parities = (1, -1) if parity else (1,)
    return o3.Irreps([(channels, (l, p)) for l in range(l_max + 1) for p in parities]).sort().irreps.simplify()


def layer_cases() -> list[tuple[str, str, str]]:
    """(irreps_in, irreps_edge, hidden) of the first and later layers of the potential, l <= 2."""
    cases = []
    for l_max in (1, 2, 3):
        for parity in (True, False):
            hidden = hidden_irreps(4, l_max, parity)
            edge = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
            first = InteractionBlock("4x0e", edge, hidden, num_radial=3)
            cases.append((str(first.irreps_in), str(edge), str(hidden)))
            cases.append((str(first.irreps_out), str(edge), str(hidden)))
            cases.append((str(hidden), str(edge), str(hidden)))
    # unequal multiplicities: the path-by-path evaluation
    cases.append(("3x0e + 2x1o + 1x2e", "0e + 1o + 2e", "3x0e + 2x1o + 2x1e + 1x2e"))
    return cases


def reference_and_fused(irreps_in: str, irreps_edge: str, hidden: str) -> tuple[o3.TensorProduct, FusedTensorProduct]:
    block = InteractionBlock(irreps_in, irreps_edge, hidden, num_radial=3)
    tp = block.conv.tp
    return tp, FusedTensorProduct.from_e3nn(tp)


def random_inputs(tp: o3.TensorProduct, num: int, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num, tp.irreps_in1.dim, generator=generator, dtype=dtype)
    directions = torch.randn(num, 3, generator=generator, dtype=dtype)
    y = o3.spherical_harmonics(tp.irreps_in2, directions, normalize=True)
    w = torch.randn(num, tp.weight_numel, generator=generator, dtype=dtype)
    return x, y, w


def max_relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("irreps", layer_cases(), ids=lambda c: " x ".join(c[:2]))
def test_fused_product_and_gradients_equal_e3nn(irreps, dtype):
    with default_dtype(dtype):
        tp, fused = reference_and_fused(*irreps)
    inputs = [t.requires_grad_(True) for t in random_inputs(tp, 40, dtype)]
    expected = tp(*inputs)
    got = fused(*inputs)
    assert got.shape == expected.shape
    assert max_relative_error(got, expected) < TOLERANCE[dtype]
    cotangent = torch.randn_like(expected)
    grads_expected = torch.autograd.grad(expected, inputs, cotangent)
    grads_got = torch.autograd.grad(got, inputs, cotangent)
    for name, a, b in zip(("x", "y", "weight"), grads_got, grads_expected):
        assert max_relative_error(a, b) < TOLERANCE[dtype], name


@pytest.mark.parametrize("irreps", layer_cases(), ids=lambda c: " x ".join(c[:2]))
def test_convolve_equals_sum_of_edge_products(irreps):
    with default_dtype(torch.float64):
        tp, fused = reference_and_fused(*irreps)
    num_nodes, num_edges = 6, 30
    generator = torch.Generator().manual_seed(3)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    nodes = torch.randn(num_nodes, tp.irreps_in1.dim, generator=generator, dtype=torch.float64)
    _, y, w = random_inputs(tp, num_edges, torch.float64, seed=4)
    messages = tp(nodes[edge_index[0]], y, w)
    expected = torch.zeros(num_nodes, messages.shape[1], dtype=torch.float64).index_add(0, edge_index[1], messages)
    got = fused.convolve(nodes, y, w, edge_index)
    assert max_relative_error(got, expected) < TOLERANCE[torch.float64]


def test_convolution_modes_share_state_dict_and_agree():
    irreps = ("4x0e + 4x1o", "0e + 1o", "8x0e + 4x1o + 4x1e")
    with default_dtype(torch.float64):
        reference = TensorProductConv(*irreps, num_radial=5, avg_num_neighbors=3.0)
        fused = TensorProductConv(*irreps, num_radial=5, avg_num_neighbors=3.0, tensor_product="fused")
    assert reference.state_dict().keys() == fused.state_dict().keys()
    fused.load_state_dict(reference.state_dict())
    generator = torch.Generator().manual_seed(0)
    nodes = torch.randn(5, reference.irreps_in.dim, generator=generator, dtype=torch.float64)
    edge_index = torch.randint(0, 5, (2, 20), generator=generator)
    edge_attr = o3.spherical_harmonics("0e + 1o", torch.randn(20, 3, generator=generator, dtype=torch.float64), True)
    radial = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    expected = reference(nodes, edge_attr, radial, edge_index)
    assert max_relative_error(fused(nodes, edge_attr, radial, edge_index), expected) < TOLERANCE[torch.float64]


def test_unknown_tensor_product_is_rejected():
    with pytest.raises(ValueError, match="tensor_product"):
        TensorProductConv("4x0e", "0e + 1o", "4x0e + 4x1o", num_radial=3, tensor_product="cuda")


def structures(dtype: torch.dtype, cutoff: float) -> list:
    rng = np.random.default_rng(0)
    molecule = ase.Atoms(rng.choice(["H", "C", "O"], 6), positions=rng.uniform(0.0, 2.5, (6, 3)))
    cell = ase.Atoms(
        rng.choice(["H", "C", "O"], 4),
        scaled_positions=rng.uniform(0.0, 1.0, (4, 3)),
        cell=3.5 * np.eye(3) + rng.normal(0.0, 0.3, (3, 3)),
        pbc=True,
    )
    return [atoms_to_graph(a, cutoff, dtype=dtype, on_isolated="ignore") for a in (molecule, cell)]


def make_potential(tensor_product: str, l_max: int = 1) -> EquivariantPotential:
    torch.manual_seed(2)
    model = EquivariantPotential(
        ["H", "C", "O"],
        cutoff=3.0,
        l_max=l_max,
        channels=4,
        num_layers=2,
        radial_hidden=8,
        avg_num_neighbors=6.0,
        tensor_product=tensor_product,
    )
    with torch.no_grad():
        model.network.scale_shift.set_values(scales=[1.5, 0.7, 1.1], shifts=[-0.3, 0.2, 0.5])
    return model


@pytest.mark.parametrize("l_max", [1, 2])
def test_fused_potential_matches_e3nn_potential(l_max):
    with default_dtype(torch.float64):
        reference = make_potential("e3nn", l_max)
        fused = make_potential("fused", l_max)
    fused.load_state_dict(reference.state_dict())
    for data in structures(torch.float64, 3.0):
        expected, got = reference(data, compute_stress=True), fused(data, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            assert max_relative_error(got[key], expected[key]) < TOLERANCE[torch.float64], key


def test_fused_potential_passes_physics_checks():
    with default_dtype(torch.float64):
        model = make_potential("fused")
    report = check_model(model, structures(torch.float64, 3.0), strict=True)
    assert report["forces_fd"] < 1e-6
    assert report["rotation/forces"] < 1e-9
