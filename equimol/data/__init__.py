"""Structures to graphs: neighbour lists, data sets, splits and training-set statistics."""

from equimol.data.dataset import AtomsDataset
from equimol.data.graph import CloseAtomsError, IsolatedAtomError, atoms_to_graph, edge_vectors, radius_graph
from equimol.data.io import MissingKeyError, iter_frames, read_frames
from equimol.data.ondisk import OnDiskAtomsDataset, OnDiskFormatError, is_ondisk, write_ondisk
from equimol.data.split import split_indices
from equimol.data.statistics import DatasetStatistics, compute_statistics

__all__ = [
    "atoms_to_graph",
    "radius_graph",
    "edge_vectors",
    "IsolatedAtomError",
    "CloseAtomsError",
    "AtomsDataset",
    "OnDiskAtomsDataset",
    "OnDiskFormatError",
    "write_ondisk",
    "is_ondisk",
    "read_frames",
    "iter_frames",
    "MissingKeyError",
    "split_indices",
    "DatasetStatistics",
    "compute_statistics",
]
