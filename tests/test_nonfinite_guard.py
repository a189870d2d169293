"""Nothing non-finite passes silently: a non-finite training loss or gradient, or a non-finite
validation loss, stops ``equimol fit`` with a one-line error naming the epoch, the step and the
structures, and no checkpoint holds non-finite weights; ``equimol evaluate`` names the frames
whose predictions are not finite, keeps the metrics of the others and writes valid JSON; the
ASE calculator refuses a non-finite energy, force or stress.

Non-finite values are made without coincident atoms: a frame whose energy label is so large
that its squared error overflows, a learning rate that makes the weights blow up, a model
whose output is set to NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from torch import nn

from equimol import _keys as K
from equimol.cli import main
from equimol.data.samples import sample_path

HUGE = 1e22  # eV: (1e22 / 9 atoms)^2 overflows float32, so the loss of such a frame is inf

CONFIG = """
seed_everything: 0
trainer: {{max_epochs: {epochs}, logger: false, enable_progress_bar: false, enable_model_summary: false}}
model:
  class_path: equimol.train.PotentialModule
  init_args:
    model:
      class_path: equimol.models.equivariant.EquivariantPotential
      init_args: {{species: [H, C, O], cutoff: 3.0, channels: 2, num_layers: 1}}
    apply_statistics: false
    optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: {lr}, weight_decay: 0.0}}}}
data:
  class_path: equimol.train.AtomsDataModule
  init_args: {{cutoff: 3.0, path: {train}, val_path: {val}, batch_size: 4}}
"""


def _frames(start: int, stop: int, huge: int | None = None) -> list[Atoms]:
    frames = ase.io.read(sample_path("ethanol_gfn2"), f"{start}:{stop}")
    if huge is not None:
        frames[huge].calc.results["energy"] = HUGE
    return frames


def _write_config(folder: Path, *, train_huge: int | None = None, val_huge: int | None = None,
                  lr: float = 0.01, epochs: int = 1) -> Path:
    train, val = folder / "train.xyz", folder / "val.xyz"
    ase.io.write(train, _frames(0, 12, train_huge))
    ase.io.write(val, _frames(100, 104, val_huge))
    config = folder / "config.yaml"
    config.write_text(CONFIG.format(train=train, val=val, lr=lr, epochs=epochs))
    return config


def _fit(folder: Path, capsys, **kwargs) -> tuple[int, str]:
    config = _write_config(folder, **kwargs)
    code = main(["fit", "--config", str(config), "--trainer.default_root_dir", str(folder / "run")])
    return code, capsys.readouterr().err


def _checkpoint_tensors(folder: Path) -> dict[str, list[torch.Tensor]]:
    found = {}
    for path in sorted((folder / "run" / "checkpoints").glob("*.ckpt")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        tensors = [value for key in ("state_dict", "current_model_state")
                   for value in checkpoint.get(key, {}).values() if torch.is_floating_point(value)]
        found[path.name] = tensors
    return found


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("equimol fit: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------ training


def test_a_non_finite_training_loss_stops_the_run_naming_epoch_step_and_frame(tmp_path, capsys):
    code, err = _fit(tmp_path, capsys, train_huge=5)
    assert code == 2, err[-3000:]
    line = _error_line(err)
    assert "non-finite training loss" in line
    assert "epoch 0" in line and "step " in line
    assert "frame 5 of" in line and "train.xyz" in line
    # the batch's other structures are listed too
    assert "frames" in line
    # nothing was saved: the error came before the end of the first epoch
    assert _checkpoint_tensors(tmp_path) == {}


def test_weights_that_blow_up_stop_the_run_before_any_checkpoint_holds_them(tmp_path, capsys):
    # a learning rate of 1e30 turns the weights into ~1e30 after the first step: the next
    # loss (or gradient) is not finite
    code, err = _fit(tmp_path, capsys, lr=1e30, epochs=3)
    assert code == 2, err[-3000:]
    line = _error_line(err)
    assert "non-finite" in line and "epoch 0" in line and "train.xyz" in line
    for name, tensors in _checkpoint_tensors(tmp_path).items():
        assert all(bool(torch.isfinite(t).all()) for t in tensors), name


def test_a_non_finite_validation_loss_stops_the_run_naming_the_frame(tmp_path, capsys):
    code, err = _fit(tmp_path, capsys, val_huge=2)
    assert code == 2, err[-3000:]
    line = _error_line(err)
    assert "val/loss" in line and "not finite" in line
    assert "frame 2 of" in line and "val.xyz" in line
    for name, tensors in _checkpoint_tensors(tmp_path).items():
        assert all(bool(torch.isfinite(t).all()) for t in tensors), name


# ----------------------------------------------------------------------- the guard itself


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(2, 2)
        self.second = nn.Linear(2, 1)


def _trainer_stub(**kwargs):
    return SimpleNamespace(current_epoch=1, global_step=7, world_size=1, datamodule=None, sanity_checking=False,
                           callback_metrics={}, precision_plugin=SimpleNamespace(), **kwargs)


def test_guard_names_the_parameters_with_non_finite_gradients():
    from equimol.train.guards import NonFiniteError, NonFiniteGuard

    module = _Tiny()
    for parameter in module.parameters():
        parameter.grad = torch.zeros_like(parameter)
    module.second.weight.grad[0, 1] = float("nan")
    guard = NonFiniteGuard()
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at epoch 1, step 7.*second\.weight"):
        guard.on_before_optimizer_step(_trainer_stub(), module, optimizer=None)
    module.second.weight.grad.zero_()
    guard.on_before_optimizer_step(_trainer_stub(), module, optimizer=None)  # finite: no error


def test_guard_refuses_to_save_non_finite_weights():
    from equimol.train.guards import NonFiniteError, NonFiniteGuard

    module = _Tiny()
    guard = NonFiniteGuard()
    state = {name: value.clone() for name, value in module.state_dict().items()}
    guard.on_save_checkpoint(_trainer_stub(), module, {"state_dict": state})
    state["first.bias"][1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"first\.bias"):
        guard.on_save_checkpoint(_trainer_stub(), module, {"state_dict": state})


def test_guard_is_part_of_every_run():
    from equimol.train.cli import _subcommand_parser

    parser = _subcommand_parser("fit")
    assert any(key == "non_finite" for key in parser.callback_keys)


# ---------------------------------------------------------------------------- evaluate


class _NaNForFarFrames(nn.Module):
    """A stand-in potential: energy = -sum(z) eV, forces = -pos eV/Å; NaN for every structure
    whose first atom lies beyond x = 50 Å (the frames the test moves far away)."""

    cutoff = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, batch, compute_forces: bool = True, compute_stress: bool = False):
        index = batch.batch
        n = int(batch.num_graphs)
        energy = torch.zeros(n, dtype=batch.pos.dtype).index_add_(0, index, -batch.z.to(batch.pos.dtype))
        forces = -batch.pos * self.scale
        far = batch.pos[batch.ptr[:-1], 0] > 50.0
        energy = torch.where(far, torch.full_like(energy, float("nan")), energy)
        forces = torch.where(far[index][:, None], torch.full_like(forces, float("nan")), forces)
        return {K.ENERGY: energy, K.FORCES: forces}


@pytest.fixture
def nan_model(monkeypatch):
    """``equimol evaluate`` loads :class:`_NaNForFarFrames` for any checkpoint path, as a backend."""
    import equimol.engines.evaluate as evaluate_module
    from equimol.engines.backends import InferenceBackend

    class NaNBackend(InferenceBackend):
        def __init__(self) -> None:
            super().__init__(_NaNForFarFrames.cutoff, (1, 6, 8), torch.float32, torch.device("cpu"), "NaNBackend")
            self.model = _NaNForFarFrames()

        def compute(self, graph, compute_stress: bool = False):
            with torch.no_grad():
                return self.model(graph, compute_stress=compute_stress)

    monkeypatch.setattr(evaluate_module, "load_backend", lambda source, device="cpu", dtype=None: NaNBackend())


def _evaluation_file(path: Path, far: list[int]) -> Path:
    frames = _frames(0, 10)
    for index in far:
        frames[index].positions += [100.0, 0.0, 0.0]
    ase.io.write(path, frames)
    return path


def test_evaluate_names_non_finite_frames_and_keeps_the_metrics_of_the_others(tmp_path, nan_model):
    from equimol.engines.evaluate import evaluate

    data = _evaluation_file(tmp_path / "data.xyz", far=[3, 7])
    with pytest.warns(RuntimeWarning, match=r"2 of 10 structures gave non-finite energy, forces \(frames 3, 7 of"):
        result = evaluate("model.ckpt", data, tmp_path / "out", batch_size=4, progress=False)
    assert [entry["frame"] for entry in result["non_finite"]] == [3, 7]
    assert result["non_finite"][0]["prediction"] == ["energy", "forces"]
    assert result["num_structures"] == 10 and result["num_evaluated"] == 8
    assert all(value is None or math.isfinite(value) for value in result["metrics"].values())
    assert result["metrics"]["forces_mae"] is not None

    # the same metrics as on the 8 good frames alone
    clean = _evaluation_file(tmp_path / "clean.xyz", far=[])
    frames = ase.io.read(clean, ":")
    ase.io.write(tmp_path / "good.xyz", [frame for k, frame in enumerate(frames) if k not in (3, 7)])
    good = evaluate("model.ckpt", tmp_path / "good.xyz", None, batch_size=4, progress=False)
    assert good["non_finite"] == []
    for name, value in good["metrics"].items():
        assert result["metrics"][name] == pytest.approx(value, rel=1e-6), name

    text = (tmp_path / "out" / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["non_finite"] == result["non_finite"]


def test_evaluate_command_exits_1_and_names_the_frames(tmp_path, nan_model, capsys):
    data = _evaluation_file(tmp_path / "data.xyz", far=[3])
    code = main(["evaluate", "--ckpt", str(tmp_path / "model.ckpt"), "--data", str(data),
                 "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1
    lines = [line for line in captured.err.splitlines() if line.startswith("equimol evaluate: error:")]
    assert len(lines) == 1 and "frame 3" in lines[0] and "1 of 10" in lines[0], captured.err
    assert "forces_mae" in captured.out
    json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_evaluate_with_every_frame_non_finite_writes_null_metrics(tmp_path, nan_model):
    from equimol.engines.evaluate import evaluate

    data = _evaluation_file(tmp_path / "data.xyz", far=list(range(10)))
    with pytest.warns(RuntimeWarning, match="no structure is left"):
        result = evaluate("model.ckpt", data, tmp_path / "out", batch_size=4, progress=False)
    assert result["num_evaluated"] == 0 and len(result["non_finite"]) == 10
    assert all(value is None for value in result["metrics"].values())
    json.loads((tmp_path / "out" / "metrics.json").read_text())


# -------------------------------------------------------------------------- calculator


def _backend(energy: float, bad_force_atoms=(), stress: float = 0.0):
    """An inference backend returning what it is told to."""
    from equimol.engines.backends import InferenceBackend

    class Told(InferenceBackend):
        def compute(self, graph, compute_stress: bool = False):
            forces = torch.zeros_like(graph.pos)
            forces[list(bad_force_atoms)] = float("nan")
            out = {K.ENERGY: torch.tensor([energy], dtype=torch.float64), K.FORCES: forces}
            if compute_stress:
                out[K.STRESS] = torch.full((1, 3, 3), stress, dtype=torch.float64)
            return out

    return Told(3.0, (1, 6, 8, 29), torch.float64, torch.device("cpu"), "Told")


def _calculator(backend):
    from equimol.calculator import EquimolCalculator

    return EquimolCalculator(backend)


def test_calculator_refuses_a_non_finite_energy():
    atoms = _frames(0, 1)[0]
    atoms.calc = _calculator(_backend(float("nan")))
    with pytest.raises(ValueError, match=r"non-finite energy.*C2H6O"):
        atoms.get_potential_energy()


def test_calculator_names_the_atoms_with_non_finite_forces():
    atoms = _frames(0, 1)[0]
    atoms.calc = _calculator(_backend(-1.0, bad_force_atoms=[2, 5]))
    with pytest.raises(ValueError, match=r"non-finite forces on atoms 2 \(\w+\), 5 \(\w+\)"):
        atoms.get_forces()


def test_calculator_refuses_a_non_finite_stress():
    atoms = Atoms("Cu4", positions=np.eye(4, 3) * 1.8, cell=np.eye(3) * 4.0, pbc=True)
    atoms.calc = _calculator(_backend(-1.0, stress=float("inf")))
    with pytest.raises(ValueError, match="non-finite stress"):
        atoms.get_stress()


def test_calculator_with_a_model_whose_weights_are_nan():
    from equimol.calculator import EquimolCalculator
    from equimol.models.equivariant import EquivariantPotential

    model = EquivariantPotential(species=["H", "C", "O"], cutoff=3.0, channels=2, num_layers=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    atoms = _frames(0, 1)[0]
    atoms.calc = EquimolCalculator(model, compile=False)
    with pytest.raises(ValueError, match="non-finite"):
        atoms.get_potential_energy()
