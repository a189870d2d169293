"""Small labelled data sets shipped with equimol, for examples and tests.

===============  ===========================================================================
name             contents
===============  ===========================================================================
``ethanol_gfn2`` 300 frames of ethanol from Langevin MD at 500 K (0.5 fs steps, one frame
                 every 10 steps) with GFN2-xTB energies (eV) and forces (eV/Å), made by
                 ``equimol.generate.molecule_md(n_frames=300, seed=0)``; each frame's
                 ``info["call"]`` holds the exact call.
===============  ===========================================================================

Read one with ``ase.io.read(sample_path("ethanol_gfn2"), ":")``.
"""

from __future__ import annotations

import pathlib
from importlib import resources

__all__ = ["available_samples", "sample_path"]

_SUFFIX = ".xyz"


def _sample_dir() -> pathlib.Path:
    return pathlib.Path(str(resources.files("equimol.data"))) / "samples"


def available_samples() -> list[str]:
    """Names of the shipped samples (file names without ``.xyz``), sorted."""
    return sorted(p.name[: -len(_SUFFIX)] for p in _sample_dir().glob(f"*{_SUFFIX}"))


def sample_path(name: str) -> pathlib.Path:
    """Path of the shipped sample ``name`` (with or without the ``.xyz`` suffix).

    Raises:
        ValueError: for an unknown name; the message lists the available samples.
    """
    stem = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
    path = _sample_dir() / f"{stem}{_SUFFIX}"
    if not path.is_file():
        raise ValueError(f"unknown sample {name!r}; available samples: {', '.join(available_samples())}")
    return path
