"""The cuEquivariance-backed tensor product (``tensor_product="cueq"``) gives e3nn's numbers:
convolution outputs and gradients, and a potential's energies and forces, with one state dict.
On a CPU cuEquivariance runs its PyTorch fallback; on a GPU the same code uses its kernels.
Its coupling coefficients carry single precision, so float64 results agree to about 1e-7
relative, not to round-off."""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch
from e3nn import o3
from scipy.spatial.transform import Rotation

pytest.importorskip("cuequivariance_torch")

from equimol.data.graph import atoms_to_graph  # noqa: E402
from equimol.models.equivariant import EquivariantPotential  # noqa: E402
from equimol.nn import TensorProductConv  # noqa: E402

SPECIES = ["H", "C", "O"]
TOLERANCE = dict(rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("irreps_in", ["4x0e", "4x0e + 4x1o", "4x0e + 4x0o + 4x1o + 4x1e"])
def test_cueq_convolution_gives_e3nn_values_and_gradients(irreps_in):
    torch.manual_seed(0)
    edge = o3.Irreps.spherical_harmonics(1)
    target = "4x0e + 4x0o + 4x1o + 4x1e"
    reference = TensorProductConv(irreps_in, edge, target, num_radial=5, tensor_product="e3nn").double()
    cueq = TensorProductConv(irreps_in, edge, target, num_radial=5, tensor_product="cueq").double()
    cueq.load_state_dict(reference.state_dict())
    assert set(cueq.state_dict()) == set(reference.state_dict())
    num_nodes, num_edges = 6, 20
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(num_nodes, reference.irreps_in.dim, generator=generator, dtype=torch.float64)
    edge_attr = edge.randn(num_edges, -1, dtype=torch.float64)
    radial = torch.rand(num_edges, 5, generator=generator, dtype=torch.float64)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=generator)
    outputs, gradients = [], []
    for conv in (reference, cueq):
        features = x.clone().requires_grad_(True)
        out = conv(features, edge_attr, radial, edge_index)
        (out * torch.linspace(-1, 1, out.shape[1], dtype=torch.float64)).sum().backward()
        outputs.append(out.detach())
        gradients.append((features.grad, *(p.grad for p in conv.parameters())))
    assert outputs[0].abs().max() > 1e-2
    torch.testing.assert_close(outputs[1], outputs[0], **TOLERANCE)
    for got, expected in zip(gradients[1], gradients[0]):
        torch.testing.assert_close(got, expected, **TOLERANCE)


def molecule(seed: int) -> ase.Atoms:
    rng = np.random.default_rng(seed)
    return ase.Atoms(rng.choice(SPECIES, 8), positions=rng.uniform(0.0, 2.5, (8, 3)))


def test_cueq_potential_gives_e3nn_energies_and_forces_and_stays_equivariant():
    options = dict(cutoff=3.0, channels=4, num_layers=3, avg_num_neighbors=6.0, self_connection=True, correlation=2)
    torch.manual_seed(0)
    reference = EquivariantPotential(SPECIES, tensor_product="e3nn", **options).double()
    cueq = EquivariantPotential(SPECIES, tensor_product="cueq", **options).double()
    cueq.load_state_dict(reference.state_dict())
    atoms = molecule(0)
    expected = reference(atoms_to_graph(atoms, 3.0, dtype=torch.float64))
    got = cueq(atoms_to_graph(atoms, 3.0, dtype=torch.float64))
    assert expected["forces"].abs().max() > 1e-2
    torch.testing.assert_close(got["energy"], expected["energy"], **TOLERANCE)
    torch.testing.assert_close(got["forces"], expected["forces"], **TOLERANCE)
    rotation = Rotation.random(random_state=2).as_matrix() @ np.diag([1.0, -1.0, 1.0])
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T
    rotated = cueq(atoms_to_graph(moved, 3.0, dtype=torch.float64))
    torch.testing.assert_close(rotated["energy"], got["energy"], **TOLERANCE)
    torch.testing.assert_close(rotated["forces"], got["forces"] @ torch.tensor(rotation.T), **TOLERANCE)


def test_cueq_refuses_features_beyond_l1():
    with pytest.raises(ValueError, match="l <= 1"):
        TensorProductConv("4x0e + 4x1o", o3.Irreps.spherical_harmonics(2), "4x0e + 4x2e", num_radial=5,
                          tensor_product="cueq")
