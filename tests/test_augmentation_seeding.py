"""Random augmentations without a seed of their own are seeded from PyTorch's global seed
(``torch.initial_seed()``, which ``torch.manual_seed`` and ``pl.seed_everything`` set), so one
seed makes an augmented training run repeatable.

Transforms given their own ``seed`` are checked in ``test_transforms.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from equimol.data import atoms_to_graph
from equimol.data.transforms import RandomRotation


def test_random_augmentation_follows_the_global_seed(emt_copper) -> None:
    graph = atoms_to_graph(emt_copper(0), 4.0, dtype=torch.float64)

    def draw() -> np.ndarray:
        torch.manual_seed(1234)
        transform = RandomRotation()
        return np.stack([transform(graph).pos.numpy() for _ in range(3)])

    first, again = draw(), draw()
    np.testing.assert_array_equal(first, again)
    torch.manual_seed(99)
    assert not np.allclose(RandomRotation()(graph).pos.numpy(), first[0])
