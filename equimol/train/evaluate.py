"""``equimol evaluate --ckpt C --data D [--out DIR] [--batch_size N]``: error metrics and a parity plot of a
trained potential on a data set.

``D`` is a structure file (extended XYZ, ASE database, ...), ``sample:NAME`` for a data file
shipped with equimol, or a YAML config with a ``data`` section (such as the one the model was
trained with), whose test split (or validation split, without a test split) is evaluated.
Writes ``metrics.json`` (MAE, RMSE, R² as in :mod:`equimol.train.metrics`) and ``parity.png``
(predicted against true energy per atom and force components) to ``DIR``.

A structure whose prediction (or label) is NaN or infinite is left out of the metrics and the
plot and named in ``metrics.json`` under ``non_finite``; the command then prints the metrics of
the others, one error line naming the frames, and exits with code 1. ``metrics.json`` is
always valid JSON: a metric that is not a finite number (R² of targets without spread) is
``null``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt
from torch.utils.data import Dataset
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from equimol import _cli_errors as errors
from equimol import _keys as K
from equimol.train.metrics import PotentialMetrics
from equimol.train.module import check_cutoffs, load_potential, model_cutoff, parity_pairs
from equimol.train.plots import parity_figure, save_figure

__all__ = ["evaluate", "evaluate_main", "build_evaluate_parser", "load_evaluation_data"]

logger = logging.getLogger(__name__)


def load_evaluation_data(
    data: str | Path, cutoff: float, *, energy_key: str | None = "energy", forces_key: str | None = "forces",
    stress_key: str | None = "stress", dtype: torch.dtype = torch.float32,
) -> tuple[Dataset, str]:
    """The structures to evaluate on, as graphs of radius ``cutoff``, and a description.

    Args:
        data: a structure file, ``sample:NAME``, or a YAML config with a ``data`` section.
        cutoff: the model's cutoff, Å.
    """
    text = str(data)
    if text.endswith((".yaml", ".yml")):
        return _from_config(Path(text), cutoff)
    from equimol.data import AtomsDataset

    if text.startswith("sample:"):
        from equimol.data.samples import sample_path

        path = sample_path(text.split(":", 1)[1])
    else:
        path = Path(text)
    dataset = AtomsDataset(path, cutoff, energy_key=energy_key, forces_key=forces_key,
                           stress_key=stress_key, dtype=dtype)
    return dataset, str(path)


def _from_config(path: Path, cutoff: float) -> tuple[Dataset, str]:
    from equimol.train.datamodule import AtomsDataModule

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    config = yaml.safe_load(path.read_text()) or {}
    section = config.get("data", config)
    init_args = section.get("init_args", section) if isinstance(section, dict) else None
    if not isinstance(init_args, dict) or "cutoff" not in init_args:
        raise ValueError(f"{path}: expected a 'data' section with init_args (cutoff, generator/path/sample)")
    check_cutoffs(cutoff, init_args["cutoff"])
    init_args = {k: v for k, v in init_args.items() if k != "train_transforms"}
    # the same seed and data cache as the training run of this config
    seed = config.get("seed_everything", 0)
    if isinstance(seed, int) and not isinstance(seed, bool) and init_args.get("seed") is None:
        init_args["seed"] = seed
    if init_args.get("cache_dir") is None:
        from equimol.train.cli import DEFAULT_ROOT_DIR

        root = (config.get("trainer") or {}).get("default_root_dir") or DEFAULT_ROOT_DIR
        init_args["cache_dir"] = str(Path(root) / "data")
    datamodule = AtomsDataModule(**init_args)
    datamodule.setup("test")
    subset, name = (datamodule.test_set, "test") if datamodule.test_set is not None else (datamodule.val_set, "val")
    return subset, f"{path} ({name} split)"


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of the potential in ``checkpoint`` on ``data``; writes ``metrics.json`` and
    ``parity.png`` to ``out`` when given.

    Returns:
        ``{"metrics": {name: value}, "num_structures": int, "num_evaluated": int,
        "non_finite": [...], "data": str, "checkpoint": str}`` with metric names as in
        :class:`~equimol.train.metrics.PotentialMetrics` (``energy_per_atom_mae`` eV/atom,
        ``forces_rmse`` eV/Å, ...). The metrics are those of the ``num_evaluated`` structures
        whose predictions and labels are finite; each other structure is an entry of
        ``non_finite``: ``{"index": position in the data, "frame": frame in its file,
        "prediction": [quantities], "label": [quantities]}`` naming what is not finite. A metric
        that is not a finite number is None (``null`` in ``metrics.json``).
    """
    module = load_potential(str(checkpoint), map_location=device)
    model = module.model.to(device).eval()
    cutoff = model_cutoff(model)
    if cutoff is None:
        raise ValueError(f"{checkpoint}: the model has no 'cutoff' attribute; cannot build graphs")
    dtype = next(model.parameters()).dtype
    dataset, description = load_evaluation_data(data, cutoff, dtype=dtype)
    if len(dataset) == 0:
        raise ValueError(f"{description}: no structures to evaluate")
    logger.info("evaluating %s on %d structures from %s", checkpoint, len(dataset), description)
    metrics = PotentialMetrics().to(device)
    pairs: dict[str, list[np.ndarray]] = {}
    frames = getattr(dataset, "indices", None)  # a split of a config's data: its frames in the source
    non_finite: list[dict[str, Any]] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    start = 0
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        batch = batch.to(device)
        with torch.no_grad():  # forces come from autograd inside the model; nothing else needs a graph
            prediction = model(batch, compute_forces=getattr(batch, K.FORCES, None) is not None,
                               compute_stress=getattr(batch, K.STRESS, None) is not None)
        n = int(batch.num_graphs)
        bad = _non_finite_quantities(prediction, batch)
        for k, (predicted, labels) in sorted(bad.items()):
            position = start + k
            frame = int(frames[position]) if frames is not None else position
            non_finite.append({"index": position, "frame": frame, "prediction": predicted, "label": labels})
        start += n
        if bad:  # one bad structure must not spoil the metrics of the others
            keep = [k for k in range(n) if k not in bad]
            if not keep:
                continue
            prediction, batch = _select(prediction, batch, keep)
        metrics.update(prediction, batch)
        for name, values in parity_pairs(prediction, batch).items():
            pairs.setdefault(name, []).append(values.double().numpy())
    values = {name: value if math.isfinite(value) else None for name, value in metrics.compute().items()}
    result = {
        "metrics": values,
        "num_structures": len(dataset),
        "num_evaluated": len(dataset) - len(non_finite),
        "non_finite": non_finite,
        "data": description,
        "checkpoint": str(checkpoint),
    }
    if non_finite:
        warnings.warn(_non_finite_summary(result), RuntimeWarning, stacklevel=2)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False))
        figure = parity_figure({k: np.concatenate(v) for k, v in pairs.items()}, title=description)
        save_figure(figure, out / "parity.png")
    return result


#: Quantities given per structure and per atom in predictions and labels.
_PER_STRUCTURE = (K.ENERGY, K.STRESS)
_PER_ATOM = (K.FORCES, K.PER_ATOM_ENERGY)


def _non_finite_quantities(prediction: dict[str, torch.Tensor], batch: Batch) -> dict[int, tuple[list, list]]:
    """``{structure in batch: ([predicted quantities], [label quantities])}`` that are not finite."""
    n = int(batch.num_graphs)
    found: dict[int, tuple[list, list]] = {}
    for side, values in ((0, prediction), (1, {key: getattr(batch, key, None) for key in K.LABEL_KEYS})):
        for key, value in values.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or key not in (
                    _PER_STRUCTURE + _PER_ATOM):
                continue
            rows = ~torch.isfinite(value.detach().reshape(value.shape[0], -1)).all(dim=1)
            if not bool(rows.any()):
                continue
            structures = batch.batch[rows] if key in _PER_ATOM else rows.nonzero().reshape(-1)
            for k in sorted(set(structures.tolist())):
                if k < n and key not in found.setdefault(k, ([], []))[side]:
                    found[k][side].append(key)
    return found


def _select(prediction: dict[str, torch.Tensor], batch: Batch, keep: list[int]) -> tuple[dict, Batch]:
    """The predictions and the batch of the structures ``keep`` only."""
    index = torch.tensor(keep, device=batch.batch.device)
    atoms = torch.isin(batch.batch, index)
    selected = {key: value[index] if key in _PER_STRUCTURE else value[atoms]
                for key, value in prediction.items() if key in _PER_STRUCTURE + _PER_ATOM}
    return selected, Batch.from_data_list(batch.index_select(keep))


def _non_finite_summary(result: dict[str, Any]) -> str:
    """``2 of 40 structures gave non-finite values (frames 3, 7 of D): ...``, one line."""
    bad, total = result["non_finite"], result["num_structures"]
    frames = ", ".join(str(entry["frame"]) for entry in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10
                                                                        else "")
    what = sorted({key for entry in bad for key in entry["prediction"]}) or ["labels"]
    rest = (f"the metrics are those of the other {total - len(bad)}" if len(bad) < total
            else "no structure is left for the metrics")
    return (f"{len(bad)} of {total} structures gave non-finite {', '.join(what)} "
            f"({'frame' if len(bad) == 1 else 'frames'} {frames} of {result['data']}); {rest}, and "
            "metrics.json lists the failed frames under 'non_finite'")


def build_evaluate_parser() -> ArgumentParser:
    """The parser of ``equimol evaluate``."""
    parser = ArgumentParser(
        prog="equimol evaluate",
        description="Error metrics (JSON) and a parity plot (PNG) of a trained potential on a data set.",
        **errors.PARSER_KWARGS,
    )
    parser.add_argument("--ckpt", type=str, required=True, help="checkpoint written by 'equimol fit' (.ckpt)")
    parser.add_argument("--data", type=str, required=True,
                        help="structure file, sample:NAME, or a YAML config with a 'data' section")
    parser.add_argument("--out", type=Optional[str], default=None,
                        help="folder for metrics.json and parity.png (default: evaluation/ beside the "
                        "checkpoints/ folder)")
    parser.add_argument("--batch_size", type=PositiveInt, default=16, help="structures per batch")
    parser.add_argument("--device", type=str, default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


def evaluate_main(argv: list[str]) -> int:
    """``equimol evaluate``: parse ``argv`` (the arguments after ``evaluate``), run, and print
    the metrics to stdout."""
    args = build_evaluate_parser().parse_args(list(argv))
    out = args.out or str(Path(args.ckpt).resolve().parent.parent / "evaluation")
    with warnings.catch_warnings():  # reported below as the command's error line
        warnings.filterwarnings("ignore", message=r"\d+ of \d+ structures gave non-finite", category=RuntimeWarning)
        result = evaluate(args.ckpt, args.data, out, batch_size=args.batch_size, device=args.device)
    width = max(len(name) for name in result["metrics"]) if result["metrics"] else 0
    print(f"{result['num_structures']} structures from {result['data']}")
    for name, value in result["metrics"].items():
        print(f"  {name:<{width}}  {'null' if value is None else format(value, '.6g')}")
    print(f"wrote {Path(out) / 'metrics.json'} and {Path(out) / 'parity.png'}")
    if result["non_finite"]:  # the metrics of the others are written, but the run did not succeed
        print(f"equimol evaluate: error: {_non_finite_summary(result)}", file=sys.stderr)
        return 1
    return 0
