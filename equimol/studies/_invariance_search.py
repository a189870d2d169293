"""A small hyperparameter search on the validation split, for one model entry of the study.

A model entry may list candidate values (``search: {lr: [...], hidden: [...]}``). Every
combination is trained exactly as the entry would be, within the ``converged`` budget, on the
training split less its validation structures; the candidate with the lowest validation loss
(the weighted energy-per-atom and force loss the budget monitors) is kept. The choice never
looks at a test set, so the test errors of the kept model stay honest estimates.

Every candidate of every model is tuned the same way, which is the point: a baseline that
was never tuned makes built-in symmetry look better than it is.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from equimol.studies._invariance_config import ModelEntry
from equimol.studies._invariance_training import TrainedModel

__all__ = ["SearchResult", "candidate_entries", "format_settings", "search_entry"]


def format_settings(settings: dict[str, Any]) -> str:
    """``"lr=0.001, hidden=[64, 64]"``: one candidate's values, in the order of the search."""
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def candidate_entries(entry: ModelEntry) -> list[tuple[dict[str, Any], ModelEntry]]:
    """Every combination of ``entry.search`` as (values, entry with the values set and no search).

    ``lr`` sets the entry's learning rate; any other key sets that ``init_args`` key of the
    model. Without a search: the entry itself, with no values.
    """
    if not entry.search:
        return [({}, entry)]
    keys = list(entry.search)
    candidates = []
    for values in itertools.product(*(entry.search[key] for key in keys)):
        settings = dict(zip(keys, values))
        init_args = {**(entry.model.get("init_args") or {}),
                     **{key: value for key, value in settings.items() if key != "lr"}}
        candidate = dataclasses.replace(
            entry,
            model={**entry.model, "init_args": init_args},
            lr=settings.get("lr", entry.lr),
            search={},
        )
        candidates.append((settings, candidate))
    return candidates


@dataclass
class SearchResult:
    """The kept candidate and every candidate's validation loss.

    Attributes:
        entry: the kept candidate (its values set, no search).
        trained: its trained model.
        rows: one dict per candidate: ``model``, ``settings`` (:func:`format_settings`),
            ``val_loss``, ``epochs``, ``stopped_by``, ``train_cpu_seconds``, ``chosen``.
    """

    entry: ModelEntry
    trained: TrainedModel
    rows: list[dict[str, Any]] = field(default_factory=list)


def search_entry(
    entry: ModelEntry,
    train: Callable[[ModelEntry, str], TrainedModel],
    say: Callable[[str], None] = lambda text: None,
) -> SearchResult:
    """Train every candidate of ``entry`` with ``train(candidate, label)`` and keep the one
    with the lowest validation loss (the first of equals; a NaN loss never wins).

    Args:
        entry: a model entry with a ``search``.
        train: trains one candidate entry (``label`` names it, e.g. for a W&B run) and returns
            it with ``best_val_loss`` set (the ``converged`` budget).
        say: progress lines.

    Returns:
        The kept candidate, its trained model and one row per candidate.

    Raises:
        ValueError: no candidate has a finite validation loss (every one diverged).
    """
    best: tuple[float, int, ModelEntry, TrainedModel] | None = None
    rows = []
    for index, (settings, candidate) in enumerate(candidate_entries(entry)):
        label = format_settings(settings)
        trained = train(candidate, label)
        loss = float(trained.best_val_loss)
        rows.append({"model": entry.name, "settings": label, "val_loss": loss, "epochs": trained.epochs,
                     "stopped_by": trained.stopped_by, "train_cpu_seconds": trained.cpu_seconds, "chosen": False})
        say(f"search {entry.name} [{label}]: validation loss {loss:.3e}, {trained.epochs} epochs")
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, index, candidate, trained)
    if best is None:
        raise ValueError(f"models[{entry.name!r}].search: no candidate reached a finite validation loss "
                         f"({[row['settings'] for row in rows]})")
    rows[best[1]]["chosen"] = True  # by position: two candidates may print alike
    return SearchResult(best[2], best[3], rows)
