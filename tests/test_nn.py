"""The layers of equimol.nn: shapes and irreps contracts, equivariance, smooth cutoffs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

import equimol.nn as enn

# In float64 the reference itself limits the check: e3nn 0.6's ``Irreps.D_from_matrix`` is
# accurate to ~1e-7 only (D(R1) D(R2) - D(R1 R2) ~ 5e-7 for l = 3). The model tests, which
# rotate vectors with the matrix itself, check float64 to 1e-9.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 5e-6}
DTYPES = [torch.float32, torch.float64]


def random_graph(num_nodes: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [N, 3] Å in a small box and the complete directed graph without self-loops."""
    generator = torch.Generator().manual_seed(seed)
    pos = 2.0 * torch.randn(num_nodes, 3, generator=generator, dtype=dtype)
    j, i = torch.meshgrid(torch.arange(num_nodes), torch.arange(num_nodes), indexing="ij")
    keep = j != i
    return pos, torch.stack([j[keep], i[keep]])


# ---- radial bases ---------------------------------------------------------------------------


def test_bessel_basis_matches_formula():
    basis = enn.BesselBasis(cutoff=4.0, num_basis=5).double()
    r = torch.tensor([0.5, 1.7, 3.9], dtype=torch.float64)
    n = np.arange(1, 6)
    expected = 2.0 / 4.0 * np.sin(n * np.pi * r.numpy()[:, None] / 4.0) / r.numpy()[:, None]
    # the frequencies n pi are created in the default dtype (float32), then cast
    np.testing.assert_allclose(basis(r).detach().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_bessel_frequencies_are_trainable_only_when_asked():
    assert [name for name, _ in enn.BesselBasis(5.0, 8, trainable=True).named_parameters()] == ["frequencies"]
    assert list(enn.BesselBasis(5.0, 8, trainable=False).parameters()) == []


def test_gaussian_basis_peaks_at_its_centres():
    basis = enn.GaussianBasis(cutoff=5.0, num_basis=6)
    centres = torch.linspace(0.0, 5.0, 6)
    values = basis(centres)
    assert values.shape == (6, 6)
    torch.testing.assert_close(values.diagonal(), torch.ones(6))
    assert torch.equal(values.argmax(dim=1), torch.arange(6))


def test_radial_embedding_vanishes_beyond_cutoff():
    embedding = enn.RadialEmbedding(cutoff=3.0, num_basis=4).double()
    r = torch.tensor([1.0, 2.999, 3.0, 3.5], dtype=torch.float64)
    out = embedding(r)
    assert out.shape == (4, 4)
    assert out[0].abs().max() > 0.1
    assert out[1].abs().max() < 1e-8
    assert torch.all(out[2:] == 0)


# ---- cutoff envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "envelope", [enn.PolynomialCutoff(4.0, p=6), enn.PolynomialCutoff(4.0, p=3), enn.CosineCutoff(4.0)]
)
def test_cutoff_value_and_derivative_vanish_at_cutoff(envelope):
    rc = 4.0
    assert envelope(torch.tensor([0.0], dtype=torch.float64)).item() == pytest.approx(1.0, abs=1e-12)
    assert torch.all(envelope(torch.tensor([rc, rc + 0.1, 10.0], dtype=torch.float64)) == 0)
    # Left of the cutoff, value ~ h^k and slope ~ h^(k-1) with k >= 2: both go to zero as h -> 0.
    for h in (1e-2, 1e-3, 1e-4):
        r = torch.tensor([rc - h], dtype=torch.float64, requires_grad=True)
        value = envelope(r)
        (slope,) = torch.autograd.grad(value.sum(), r)
        assert abs(value.item()) < 10 * h**2
        assert abs(slope.item()) < 10 * h
    # The autograd slope is the true derivative (central differences away from the cutoff).
    r = torch.tensor([1.3, 2.6, 3.7], dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(envelope(r).sum(), r)
    eps = 1e-6
    numeric = (envelope(r.detach() + eps) - envelope(r.detach() - eps)) / (2 * eps)
    torch.testing.assert_close(slope, numeric, rtol=1e-6, atol=1e-9)


def test_cutoff_is_monotonic_between_zero_and_cutoff():
    r = torch.linspace(0.0, 4.0, 401, dtype=torch.float64)
    for envelope in (enn.PolynomialCutoff(4.0), enn.CosineCutoff(4.0)):
        values = envelope(r)
        assert torch.all(values[1:] <= values[:-1] + 1e-15)


def test_cutoff_rejects_non_positive_radius():
    with pytest.raises(ValueError, match="cutoff"):
        enn.PolynomialCutoff(0.0)


# ---- spherical harmonics --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l_max", [1, 3])
def test_spherical_harmonics_are_equivariant(l_max, dtype):
    embedding = enn.SphericalHarmonicEdgeEmbedding(l_max).to(dtype)
    assert embedding.irreps_out == o3.Irreps.spherical_harmonics(l_max)
    vectors = torch.randn(10, 3, dtype=dtype)
    assert embedding(vectors).shape == (10, embedding.irreps_out.dim)
    assert_equivariant(embedding, args_in=[vectors], tolerance=TOLERANCE[dtype])


def test_spherical_harmonics_depend_on_direction_only():
    embedding = enn.SphericalHarmonicEdgeEmbedding(2).double()
    vectors = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(embedding(vectors), embedding(3.7 * vectors))


# ---- convolution, gate, interaction ---------------------------------------------------------


def graph_function(module, l_max: int = 2, cutoff: float = 6.0):
    """Wrap a convolution-like module as f(node_features, positions) for assert_equivariant."""
    sh = enn.SphericalHarmonicEdgeEmbedding(l_max)
    radial = enn.RadialEmbedding(cutoff, num_basis=module_num_radial(module))

    def function(node_features: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        vectors = pos[edge_index[0]] - pos[edge_index[1]]
        sh_ = sh.to(pos.dtype)
        radial_ = radial.to(pos.dtype)
        return module(node_features, sh_(vectors), radial_(vectors.norm(dim=-1)), edge_index)

    return function


def module_num_radial(module) -> int:
    conv = module if isinstance(module, enn.TensorProductConv) else module.conv
    return conv.radial_mlp.hs[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_product_conv_is_equivariant(dtype):
    irreps_in = o3.Irreps("4x0e + 3x1o + 2x2e")
    irreps_out = "5x0e + 2x0o + 3x1o + 3x1e + 2x2e"
    conv = enn.TensorProductConv(irreps_in, o3.Irreps.spherical_harmonics(2), irreps_out, 6).to(dtype)
    pos, edge_index = random_graph(6, dtype)
    x = irreps_in.randn(6, -1, dtype=dtype)
    out = graph_function(conv)(x, pos, edge_index)
    assert out.shape == (6, conv.irreps_out.dim)
    assert out.abs().max() > 1e-3
    assert_equivariant(
        graph_function(conv),
        args_in=[x, pos, edge_index],
        irreps_in=[irreps_in, "cartesian_points", None],
        irreps_out=[conv.irreps_out],
        tolerance=TOLERANCE[dtype],
    )


def test_messages_flow_from_neighbour_to_centre():
    conv = enn.TensorProductConv("3x0e", "0e + 1o", "3x0e + 2x1o", num_radial=4).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    edge_index = torch.tensor([[0], [1]])  # one edge: neighbour 0 -> centre 1
    vector = torch.tensor([[0.3, -0.4, 1.1]], dtype=torch.float64)
    edge_attr = enn.SphericalHarmonicEdgeEmbedding(1).double()(vector)
    radial = torch.rand(1, 4, dtype=torch.float64)
    out = conv(x, edge_attr, radial, edge_index)
    assert torch.all(out[0] == 0)
    (grad,) = torch.autograd.grad(out[1].sum(), x)
    assert grad[0].abs().max() > 0
    assert torch.all(grad[1] == 0)


def test_conv_divides_by_square_root_of_avg_num_neighbors():
    conv = enn.TensorProductConv("3x0e + 1x1o", "0e + 1o", "3x0e + 2x1o", num_radial=4).double()
    pos, edge_index = random_graph(5, torch.float64)
    x = conv.irreps_in.randn(5, -1, dtype=torch.float64)
    function = graph_function(conv, l_max=1)
    before = function(x, pos, edge_index)
    conv.set_avg_num_neighbors(4.0)
    torch.testing.assert_close(function(x, pos, edge_index), before / 2.0)


def test_conv_without_any_path_is_an_error():
    with pytest.raises(ValueError, match="no path"):
        enn.TensorProductConv("2x0e", "0e", "2x1o", num_radial=4)


def test_messages_vanish_smoothly_at_the_cutoff():
    """With the enveloped radial basis, moving a neighbour across r_c changes nothing abruptly."""
    cutoff = 3.0
    conv = enn.TensorProductConv("2x0e", "0e + 1o", "2x0e + 2x1o", num_radial=4).double()
    sh = enn.SphericalHarmonicEdgeEmbedding(1).double()
    radial = enn.RadialEmbedding(cutoff, num_basis=4).double()
    x = torch.randn(2, 2, dtype=torch.float64)
    edge_index = torch.tensor([[0], [1]])

    def out(r: float) -> torch.Tensor:
        vector = torch.tensor([[r, 0.0, 0.0]], dtype=torch.float64)
        return conv(x, sh(vector), radial(vector.norm(dim=-1)), edge_index)

    assert out(1.5).abs().max() > 1e-3
    assert out(cutoff - 1e-3).abs().max() < 1e-7
    assert torch.all(out(cutoff + 1e-3) == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_is_equivariant_and_outputs_requested_irreps(dtype):
    gate = enn.Gate("4x0e + 2x0o + 3x1o + 2x1e + 1x2e").to(dtype)
    assert gate.irreps_out == o3.Irreps("4x0e + 2x0o + 3x1o + 2x1e + 1x2e")
    # inputs: the scalars, one 0e gate per gated irrep (3 + 2 + 1), the gated irreps
    assert gate.irreps_in == o3.Irreps("4x0e + 6x0e + 2x0o + 3x1o + 2x1e + 1x2e").sort().irreps.simplify()
    x = gate.irreps_in.randn(5, -1, dtype=dtype)
    assert_equivariant(gate, args_in=[x], tolerance=TOLERANCE[dtype])


def test_interaction_block_keeps_reachable_irreps_and_adds_residual_when_they_match():
    target = o3.Irreps("4x0e + 4x0o + 4x1o + 4x1e")
    edge = o3.Irreps.spherical_harmonics(1)
    first = enn.InteractionBlock("4x0e", edge, target, num_radial=4)
    assert first.irreps_out == o3.Irreps("4x0e + 4x1o")  # 0e x (0e + 1o) cannot make 0o or 1e
    assert not first.residual
    second = enn.InteractionBlock(first.irreps_out, edge, target, num_radial=4)
    third = enn.InteractionBlock(second.irreps_out, edge, target, num_radial=4)
    fourth = enn.InteractionBlock(third.irreps_out, edge, target, num_radial=4)
    assert third.irreps_out == o3.Irreps("4x0e + 4x0o + 4x1o + 4x1e")  # 1o x 1e makes 0o
    assert fourth.residual and fourth.irreps_in == fourth.irreps_out


@pytest.mark.parametrize("dtype", DTYPES)
def test_interaction_block_is_equivariant(dtype):
    target = "3x0e + 3x0o + 2x1o + 2x1e + 2x2e"
    block = enn.InteractionBlock("3x0e + 2x1o", o3.Irreps.spherical_harmonics(2), target, num_radial=5).to(dtype)
    pos, edge_index = random_graph(5, dtype, seed=1)
    x = block.irreps_in.randn(5, -1, dtype=dtype)
    assert_equivariant(
        graph_function(block),
        args_in=[x, pos, edge_index],
        irreps_in=[block.irreps_in, "cartesian_points", None],
        irreps_out=[block.irreps_out],
        tolerance=TOLERANCE[dtype],
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_interaction_block_with_species_self_connection_and_products_is_equivariant(dtype):
    target = "3x0e + 3x0o + 3x1o + 3x1e"
    block = enn.InteractionBlock(
        "3x0e + 3x1o", o3.Irreps.spherical_harmonics(1), target, num_radial=5, radial_hidden=(6, 6),
        num_species=2, correlation=3,
    ).to(dtype)
    pos, edge_index = random_graph(5, dtype, seed=2)
    x = block.irreps_in.randn(5, -1, dtype=dtype)
    species = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1]), 2).to(dtype)
    assert_equivariant(
        lambda x, pos, edge_index: block(x, *function_inputs(pos, edge_index, dtype), species),
        args_in=[x, pos, edge_index],
        irreps_in=[block.irreps_in, "cartesian_points", None],
        irreps_out=[block.irreps_out],
        tolerance=TOLERANCE[dtype],
    )
    with pytest.raises(ValueError, match="node_attrs"):
        block(x, *function_inputs(pos, edge_index, dtype))


def function_inputs(pos: torch.Tensor, edge_index: torch.Tensor, dtype: torch.dtype):
    """Edge attributes (l <= 1), radial features (5, cutoff 6 Å) and edge_index of a graph."""
    vectors = pos[edge_index[0]] - pos[edge_index[1]]
    sh = enn.SphericalHarmonicEdgeEmbedding(1).to(dtype)
    radial = enn.RadialEmbedding(6.0, num_basis=5).to(dtype)
    return sh(vectors), radial(vectors.norm(dim=-1)), edge_index


def test_self_connection_depends_on_the_species():
    block = enn.InteractionBlock("3x0e + 3x1o", o3.Irreps.spherical_harmonics(1), "3x0e + 3x1o", num_radial=5,
                                 num_species=2)
    pos, edge_index = random_graph(4, torch.float32, seed=3)
    x = block.irreps_in.randn(4, -1)
    inputs = function_inputs(pos, edge_index, torch.float32)
    first = block(x, *inputs, torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 0]), 2).float())
    second = block(x, *inputs, torch.nn.functional.one_hot(torch.tensor([1, 0, 0, 0]), 2).float())
    assert (first[0] - second[0]).abs().max() > 1e-3  # atom 0 changed species
    torch.testing.assert_close(first[1:], second[1:])  # the others did not


@pytest.mark.parametrize("correlation", [2, 3])
def test_product_basis_is_equivariant_and_of_the_right_order(correlation):
    basis = enn.ProductBasis("4x0e + 4x1o + 4x1e", correlation).double()
    x = basis.irreps_in.randn(6, -1, dtype=torch.float64)
    assert_equivariant(basis, args_in=[x], irreps_in=[basis.irreps_in], irreps_out=[basis.irreps_out],
                       tolerance=TOLERANCE[torch.float64])
    # every output is a product of k factors, so it scales as the k-th power of the input; the
    # outputs are grouped by irrep, so orders are found by their scaling, every one present
    ratio = basis(2.0 * x) / basis(x)
    powers = torch.log2(ratio.abs()).round()
    torch.testing.assert_close(ratio, torch.sign(ratio) * 2.0**powers)
    assert (ratio > 0).all()
    assert set(powers.unique().tolist()) == {float(k) for k in range(2, correlation + 1)}


def test_product_basis_leaves_out_products_that_vanish():
    """A vector's cross product with itself is zero: no such path is built."""
    basis = enn.ProductBasis("2x0e + 2x1o", correlation=2)
    assert basis.irreps_out == o3.Irreps("4x0e + 2x1o")  # s*s, v.v; s*v; no v x v


def test_product_basis_needs_one_multiplicity_and_order_two():
    with pytest.raises(ValueError, match="one multiplicity"):
        enn.ProductBasis("2x0e + 3x1o", 2)
    with pytest.raises(ValueError, match="at least 2"):
        enn.ProductBasis("2x0e", 1)


# ---- embedding and readouts -----------------------------------------------------------------


def test_species_embedding_gives_one_row_per_species():
    embedding = enn.SpeciesEmbedding(3, "8x0e")
    out = embedding(torch.tensor([0, 2, 2, 1]))
    assert out.shape == (4, 8)
    torch.testing.assert_close(out[1], out[2])
    assert not torch.allclose(out[0], out[1])


def test_scalar_readout_is_invariant():
    readout = enn.ScalarReadout("4x0e + 2x1o + 3x0o", hidden=5).double()
    x = readout.irreps_in.randn(6, -1, dtype=torch.float64)
    assert readout(x).shape == (6,)
    assert_equivariant(
        lambda f: readout(f).unsqueeze(-1),
        args_in=[x],
        irreps_in=[readout.irreps_in],
        irreps_out=["0e"],
        tolerance=TOLERANCE[torch.float64],
    )


def test_scalar_readout_needs_even_scalars():
    with pytest.raises(ValueError, match="0e"):
        enn.ScalarReadout("2x1o + 2x0o")


def test_atomwise_linear_respects_irreps():
    layer = enn.AtomwiseLinear("4x0e + 2x1o", "3x0e + 1x1o")
    assert layer(layer.irreps_in.randn(7, -1)).shape == (7, layer.irreps_out.dim)


def test_per_species_scale_shift_applies_its_formula():
    layer = enn.PerSpeciesScaleShift(3, scales=[1.0, 2.0, 3.0], shifts=[-1.0, 0.5, 10.0])
    x = torch.tensor([1.0, 1.0, 2.0, -1.0])
    types = torch.tensor([0, 1, 2, 2])
    torch.testing.assert_close(layer(x, types), torch.tensor([0.0, 2.5, 16.0, 7.0]))
    layer.set_values(scales=0.5, shifts=[0.0, 0.0, 1.0])
    torch.testing.assert_close(layer(x, types), torch.tensor([0.5, 0.5, 2.0, 0.5]))
    assert {name for name, _ in layer.named_parameters()} == {"scales", "shifts"}


def test_per_species_scale_shift_can_be_frozen():
    layer = enn.PerSpeciesScaleShift(2, scales=2.0, shifts=1.0, trainable=False)
    assert list(layer.parameters()) == []
    assert {name for name, _ in layer.named_buffers()} == {"scales", "shifts"}


def test_per_species_scale_shift_rejects_wrong_length():
    with pytest.raises(ValueError, match="shifts has 2 values, expected 1 or 3"):
        enn.PerSpeciesScaleShift(3, shifts=[1.0, 2.0])


def test_nn_imports_nothing_else_from_equimol():
    import ast
    from pathlib import Path

    package = Path(enn.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("equimol"):
                assert node.module.startswith("equimol.nn"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.name
                    assert not name.startswith("equimol") or name.startswith("equimol.nn"), path.name
