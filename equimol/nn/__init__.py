"""Importable equivariant layers: tensor in, tensor out.

Every layer takes plain tensors (node features, edge vectors or lengths, ``edge_index``)
and needs no graph object, trainer or config to be built. Equivariant layers carry
``irreps_in`` and ``irreps_out`` (``e3nn.o3.Irreps``). Edge direction follows PyG:
messages flow from ``edge_index[0]`` (neighbour j) to ``edge_index[1]`` (centre i).
"""

from equimol.nn._convolution import TensorProductConv, reachable_irreps
from equimol.nn._cutoff import CosineCutoff, PolynomialCutoff
from equimol.nn._embedding import SpeciesEmbedding
from equimol.nn._fast_tp import FusedTensorProduct
from equimol.nn._gate import Gate
from equimol.nn._interaction import InteractionBlock
from equimol.nn._product import ProductBasis
from equimol.nn._radial import BesselBasis, GaussianBasis, RadialEmbedding
from equimol.nn._readout import AtomwiseLinear, PerSpeciesScaleShift, ScalarReadout
from equimol.nn._spherical_harmonics import SphericalHarmonicEdgeEmbedding

__all__ = [
    "BesselBasis",
    "GaussianBasis",
    "RadialEmbedding",
    "PolynomialCutoff",
    "CosineCutoff",
    "SphericalHarmonicEdgeEmbedding",
    "SpeciesEmbedding",
    "TensorProductConv",
    "FusedTensorProduct",
    "reachable_irreps",
    "Gate",
    "InteractionBlock",
    "ProductBasis",
    "AtomwiseLinear",
    "ScalarReadout",
    "PerSpeciesScaleShift",
]
