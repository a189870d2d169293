"""Loading never runs code: checkpoints and the VAE data cache are read with
``weights_only=True``, and a class (or any importable name) that a checkpoint names outside
equimol, torch and the modules the user trusts is refused before anything imports it.

The foreign module of these tests writes a marker file when it is imported; every refusal
asserts that the marker was not written. One tiny model is trained for the module."""

from __future__ import annotations

import ast
import copy
import sys
from pathlib import Path

import pytest
import torch

from equimol.cli import main as equimol_main
from equimol.train.checkpoints import TRUSTED_MODULES_ENV, CheckpointError, UntrustedClassError, load_checkpoint
from equimol.train.module import load_potential

ROOT = Path(__file__).resolve().parents[1]


FOREIGN = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")

from equimol.models.equivariant import EquivariantPotential


class Net(EquivariantPotential):
    """An equimol potential defined outside equimol."""


def make_optimizer(params):
    import torch
    return torch.optim.SGD(params, lr=0.1)
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_tiny_ethanol_config) -> tuple[Path, dict]:
    """The config file and the last checkpoint (as a dict) of a model fitted for one step."""
    root = tmp_path_factory.mktemp("safe")
    config = write_tiny_ethanol_config(root / "config.in.yaml", limit_train_batches=1, limit_val_batches=1)
    assert equimol_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root / "run")]) == 0
    return config, torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture
def foreign(tmp_path, monkeypatch, request) -> tuple[str, Path]:
    """A module name (unique to the test) on ``sys.path`` whose import writes a marker file."""
    name = "foreign_" + "".join(c if c.isalnum() else "_" for c in request.node.name)
    folder = tmp_path / "modules"
    folder.mkdir()
    marker = tmp_path / "imported.marker"
    (folder / f"{name}.py").write_text(FOREIGN.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv(TRUSTED_MODULES_ENV, raising=False)
    yield name, marker
    sys.modules.pop(name, None)


def _crafted(trained, tmp_path: Path, change) -> Path:
    checkpoint = copy.deepcopy(trained[1])
    change(checkpoint)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path


def _refused_message(error: BaseException, name: str, class_path: str) -> str:
    message = str(error)
    assert repr(class_path) in message, message
    assert f"{TRUSTED_MODULES_ENV}={name}" in message and f"trusted_modules=[{name!r}]" in message, message
    return message


def _set_model_class(name):
    def change(checkpoint):
        checkpoint["hyper_parameters"]["model"]["class_path"] = f"{name}.Net"
    return change


def test_foreign_model_class_is_refused_before_it_is_imported(trained, tmp_path, foreign):
    name, marker = foreign
    path = _crafted(trained, tmp_path, _set_model_class(name))
    with pytest.raises(UntrustedClassError) as error:
        load_potential(str(path))
    message = _refused_message(error.value, name, f"{name}.Net")
    assert "hyper_parameters.model.class_path" in message
    assert not marker.exists()
    assert name not in sys.modules


@pytest.mark.parametrize("where", ["module", "optimizer", "datamodule"])
def test_every_name_a_checkpoint_would_import_is_checked(trained, tmp_path, foreign, where):
    """The LightningModule's own ``_class_path``, a callable given by name (jsonargparse imports
    it to build the optimizer) and the data module's class."""
    name, marker = foreign
    target = {"module": f"{name}.Net", "optimizer": f"{name}.make_optimizer", "datamodule": f"{name}.Net"}[where]

    def change(checkpoint):
        if where == "module":
            checkpoint["hyper_parameters"]["_class_path"] = target
        elif where == "optimizer":
            checkpoint["hyper_parameters"]["optimizer"] = target
        else:
            checkpoint["datamodule_hyper_parameters"]["_class_path"] = target

    path = _crafted(trained, tmp_path, change)
    with pytest.raises(UntrustedClassError) as error:
        load_potential(str(path))
    _refused_message(error.value, name, target)
    assert not marker.exists()


def test_evaluate_and_calculator_refuse_a_foreign_class_in_one_line(trained, tmp_path, foreign, capsys):
    from equimol.calculator import EquimolCalculator

    name, marker = foreign
    path = _crafted(trained, tmp_path, _set_model_class(name))
    assert equimol_main(["evaluate", "--ckpt", str(path), "--data", "sample:ethanol_gfn2",
                         "--out", str(tmp_path / "evaluation")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("equimol evaluate: error: "), lines
    _refused_message(lines[0], name, f"{name}.Net")
    with pytest.raises(UntrustedClassError):
        EquimolCalculator(str(path))
    assert not marker.exists()


def test_fit_from_a_checkpoint_naming_a_foreign_class_imports_nothing(trained, tmp_path, foreign, capsys):
    """Lightning's CLI reads the hyperparameters of a ``--ckpt_path`` file into the config,
    importing the classes they name: the checkpoint is checked before."""
    name, marker = foreign
    path = _crafted(trained, tmp_path, _set_model_class(name))
    code = equimol_main(["fit", "--config", str(trained[0]), "--trainer.default_root_dir", str(tmp_path / "new"),
                         "--ckpt_path", str(path)])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("equimol fit: error: "), lines
    _refused_message(lines[0], name, f"{name}.Net")
    assert not marker.exists()
    assert not (tmp_path / "new").exists()


def test_trusted_modules_keyword_loads_the_named_module(trained, tmp_path, foreign):
    name, marker = foreign
    path = _crafted(trained, tmp_path, _set_model_class(name))
    module = load_potential(str(path), trusted_modules=[name])
    assert marker.exists()
    assert type(module.model).__module__ == name and type(module.model).__name__ == "Net"


def test_trusted_modules_environment_variable_is_honoured_by_the_commands(trained, tmp_path, foreign, monkeypatch):
    name, marker = foreign
    path = _crafted(trained, tmp_path, _set_model_class(name))
    monkeypatch.setenv(TRUSTED_MODULES_ENV, f"some_other_package, {name}")
    assert load_checkpoint(path)["hyper_parameters"]["model"]["class_path"] == f"{name}.Net"
    assert not marker.exists()  # checking imports nothing
    import ase.io

    from equimol.data.samples import sample_path

    frames = tmp_path / "frames.xyz"
    ase.io.write(frames, ase.io.read(sample_path("ethanol_gfn2"), ":3"))
    assert equimol_main(["evaluate", "--ckpt", str(path), "--data", str(frames),
                         "--out", str(tmp_path / "evaluation")]) == 0
    assert marker.exists()
    assert (tmp_path / "evaluation" / "metrics.json").is_file()


def test_a_bad_trusted_module_name_is_an_error(monkeypatch, trained, tmp_path):
    monkeypatch.setenv(TRUSTED_MODULES_ENV, "good,not a module")
    path = _crafted(trained, tmp_path, lambda checkpoint: None)
    with pytest.raises(ValueError, match=rf"{TRUSTED_MODULES_ENV}: 'not a module' is not a module name"):
        load_checkpoint(path)


def test_dotted_data_strings_are_not_mistaken_for_code(trained, tmp_path, foreign):
    """A file name with a dot that no module answers to stays data."""
    path = _crafted(trained, tmp_path, lambda checkpoint: checkpoint["hyper_parameters"].update(
        {"note": "frames.xyz"}))
    assert load_checkpoint(path)["hyper_parameters"]["note"] == "frames.xyz"


class _RunsCode:
    """Unpickling this object calls ``exec``: what a crafted file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_crafted_vae_cache_runs_nothing(tmp_path):
    from equimol.train.vae import ConfigurationDataModule

    marker = tmp_path / "ran.marker"
    cache = tmp_path / "configurations.pt"
    torch.save({"key": "anything", "data": _RunsCode(marker)}, cache)
    data = ConfigurationDataModule(gammas=[0.1], cache=str(cache))
    with pytest.raises(CheckpointError) as error:
        data.prepare_data()
    message = str(error.value)
    assert message.startswith(f"{cache} is not a plain VAE data cache"), message
    assert "weights_only=False" not in message
    assert not marker.exists()


def test_the_vae_command_refuses_a_crafted_cache_in_one_line(tmp_path, capsys):
    marker = tmp_path / "ran.marker"
    cache = tmp_path / "configurations.pt"
    torch.save({"key": "anything", "data": _RunsCode(marker)}, cache)
    code = equimol_main(["fit", "--config", str(ROOT / "configs" / "vae" / "coordinate.yaml"),
                         "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false",
                         "--trainer.max_epochs", "1", "--data.init_args.cache", str(cache)])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"equimol fit: error: {cache} is not a plain VAE data cache"), lines
    assert not marker.exists()


def test_a_damaged_vae_cache_is_named(tmp_path):
    from equimol.train.vae import ConfigurationDataModule

    cache = tmp_path / "configurations.pt"
    torch.save({"key": "k", "data": {"pos": torch.zeros(4, 2, 3)}}, cache)
    cache.write_bytes(cache.read_bytes()[:100])
    damaged = r"is damaged \(truncated: .*\); delete it to regenerate the VAE data cache"
    with pytest.raises(CheckpointError, match=damaged):
        ConfigurationDataModule(gammas=[0.1], cache=str(cache)).prepare_data()


def test_the_vae_cache_is_written_as_plain_data(tmp_path):
    from equimol.train.vae import ConfigurationDataModule

    cache = tmp_path / "configurations.pt"
    tiny = {"n_particles": 4, "dim": 2, "box_length": 4.0, "n_frames": 3, "n_equilibration_sweeps": 2,
            "decorrelation_sweeps": 1}
    kwargs = dict(gammas=[0.1], generator_kwargs=tiny, cache=str(cache))
    first = ConfigurationDataModule(**kwargs)
    first.prepare_data()
    stored = torch.load(cache, weights_only=True)  # tensors and plain values only
    assert isinstance(stored["key"], str) and torch.equal(stored["data"]["pos"], first.data["pos"])
    second = ConfigurationDataModule(**kwargs)
    second.prepare_data()
    assert torch.equal(second.data["pos"], first.data["pos"])


def test_every_torch_load_in_the_package_is_weights_only():
    """No ``torch.load`` in equimol reads pickled objects."""
    offenders = []
    for path in sorted((ROOT / "equimol").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            function = node.func
            is_load = isinstance(function, ast.Attribute) and function.attr == "load"
            if is_load and getattr(function.value, "id", None) == "torch":
                flags = {k.arg: k.value for k in node.keywords}
                value = flags.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
