"""A damaged checkpoint (empty, truncated, altered bytes, not an archive) is one error naming the
file, saying what is wrong and listing the other checkpoints of its folder, on every path that
reads a checkpoint: ``load_potential``, ``equimol evaluate`` (a member of a committee too),
``equimol compile``, the ASE calculator and ``equimol fit --ckpt_path last``. One tiny model is
trained for the module."""

from __future__ import annotations

import fractions
import shutil
import struct
from pathlib import Path

import pytest
import torch

from equimol.cli import main as equimol_main
from equimol.train.checkpoints import CheckpointError, load_checkpoint, verify_checkpoint
from equimol.train.module import PotentialModule, load_potential



@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_tiny_ethanol_config) -> tuple[Path, Path]:
    """The config and the run folder of a model fitted for one epoch of two steps (with a best
    and a last checkpoint)."""
    root = tmp_path_factory.mktemp("integrity")
    config = write_tiny_ethanol_config(root / "config.in.yaml", limit_train_batches=2, limit_val_batches=1)
    assert equimol_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root / "run")]) == 0
    names = sorted(path.name for path in (root / "run" / "checkpoints").glob("*.ckpt"))
    assert names == ["best-epoch=000.ckpt", "last.ckpt"], names
    return config, root / "run"


def _weight_offset(data: bytes) -> int:
    """Where the bytes of a weight tensor of the model (in ``state_dict``) start in the archive."""
    import io

    state = torch.load(io.BytesIO(data), weights_only=True)["state_dict"]
    weight = max((value for value in state.values() if value.is_floating_point()), key=lambda value: value.numel())
    raw = weight.contiguous().numpy().tobytes()
    assert len(raw) >= 8
    start = data.find(raw)
    assert start > 0 and data.find(raw, start + 1) < 0
    return start


def damage(data: bytes, kind: str) -> bytes:
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "empty":
        return b""
    if kind == "random":
        generator = torch.Generator().manual_seed(1)
        return torch.randint(0, 256, (4096,), generator=generator, dtype=torch.uint8).numpy().tobytes()
    if kind == "altered":  # 1e25 in the first float32 values of a weight tensor, nothing else touched
        start = _weight_offset(data)
        return data[:start] + struct.pack("<2f", 1e25, -1e25) + data[start + 8:]
    raise ValueError(kind)


WHAT = {
    "truncated": "truncated",
    "empty": "empty",
    "random": "not a zip archive",
    "altered": "altered",
}


@pytest.fixture
def damaged_run(trained, tmp_path, request) -> Path:
    """A copy of the run whose last.ckpt is damaged as ``request.param`` says."""
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "checkpoints" / "last.ckpt"
    last.write_bytes(damage(last.read_bytes(), request.param))
    return copy


KINDS = pytest.mark.parametrize("damaged_run", list(WHAT), indirect=True)


def _message_ok(message: str, run: Path, kind: str) -> None:
    last = run / "checkpoints" / "last.ckpt"
    assert f"{last} is damaged ({WHAT[kind]}" in message, message
    assert f"other checkpoints in {run / 'checkpoints'}: best-epoch=000.ckpt" in message, message
    assert "weights_only=False" not in message


def _error_line(capsys, prog: str) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    return errors[0]


def test_intact_checkpoint_verifies_and_loads(trained):
    _, run = trained
    last = run / "checkpoints" / "last.ckpt"
    assert verify_checkpoint(last) == last
    checkpoint = load_checkpoint(last)
    assert checkpoint["global_step"] == 2
    module = load_potential(str(last))
    assert isinstance(module, PotentialModule)
    state = checkpoint["state_dict"]
    for name, value in module.state_dict().items():
        if name in state:
            assert torch.equal(value, state[name]), name


@KINDS
def test_load_potential_names_the_damaged_file_and_the_other_checkpoints(damaged_run, request):
    kind = request.node.callspec.params["damaged_run"]
    last = damaged_run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError) as error:
        load_potential(str(last))
    _message_ok(str(error.value), damaged_run, kind)
    assert isinstance(error.value, ValueError)  # reported in one line by the equimol command


@KINDS
def test_evaluate_reports_a_damaged_checkpoint_in_one_line(damaged_run, request, capsys):
    kind = request.node.callspec.params["damaged_run"]
    last = damaged_run / "checkpoints" / "last.ckpt"
    code = equimol_main(["evaluate", "--ckpt", str(last), "--data", "sample:ethanol_gfn2",
                         "--out", str(damaged_run / "evaluation")])
    assert code == 2
    _message_ok(_error_line(capsys, "equimol evaluate"), damaged_run, kind)
    assert not (damaged_run / "evaluation").exists()


@pytest.mark.parametrize("damaged_run", ["truncated"], indirect=True)
def test_evaluate_names_the_damaged_member_of_a_committee(damaged_run, capsys):
    checkpoints = damaged_run / "checkpoints"
    last = checkpoints / "last.ckpt"
    code = equimol_main(["evaluate", "--ckpt", str(checkpoints / "best-epoch=000.ckpt"), "--ckpt", str(last),
                         "--data", "sample:ethanol_gfn2", "--out", str(damaged_run / "evaluation")])
    assert code == 2
    line = _error_line(capsys, "equimol evaluate")
    assert f"committee member {last}: " in line
    _message_ok(line, damaged_run, "truncated")
    assert not (damaged_run / "evaluation").exists()


@pytest.mark.parametrize("damaged_run", ["truncated", "altered"], indirect=True)
def test_compile_reports_a_damaged_checkpoint_in_one_line(damaged_run, request, capsys):
    kind = request.node.callspec.params["damaged_run"]
    last = damaged_run / "checkpoints" / "last.ckpt"
    assert equimol_main(["compile", str(last), str(damaged_run / "model.pt2")]) == 2
    _message_ok(_error_line(capsys, "equimol compile"), damaged_run, kind)
    assert not (damaged_run / "model.pt2").exists()


@pytest.mark.parametrize("damaged_run", ["truncated", "empty", "altered"], indirect=True)
def test_calculator_refuses_a_damaged_checkpoint(damaged_run, request):
    from equimol.calculator import EquimolCalculator

    kind = request.node.callspec.params["damaged_run"]
    with pytest.raises(CheckpointError) as error:
        EquimolCalculator(str(damaged_run / "checkpoints" / "last.ckpt"))
    _message_ok(str(error.value), damaged_run, kind)


@pytest.mark.parametrize("damaged_run", ["truncated", "altered"], indirect=True)
def test_fit_resume_from_a_damaged_last_checkpoint_is_refused(trained, damaged_run, request, capsys):
    config, _ = trained
    kind = request.node.callspec.params["damaged_run"]
    before = {name: (damaged_run / name).read_bytes() for name in ("config.yaml", "statistics.json", "split.json")}
    code = equimol_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(damaged_run),
                         "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    assert code == 2
    _message_ok(_error_line(capsys, "equimol fit"), damaged_run, kind)
    assert {name: (damaged_run / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in (damaged_run / "checkpoints").iterdir()) == ["best-epoch=000.ckpt", "last.ckpt"]


def test_altered_weights_are_caught_although_torch_would_read_them(trained, tmp_path):
    """The altered file is still a readable archive: torch alone loads the bad weights."""
    _, run = trained
    path = tmp_path / "altered.ckpt"
    path.write_bytes(damage((run / "checkpoints" / "last.ckpt").read_bytes(), "altered"))
    state = torch.load(path, weights_only=True)["state_dict"]
    assert any(bool((value.abs() > 1e24).any()) for value in state.values() if value.is_floating_point())
    with pytest.raises(CheckpointError, match=r"altered: the bytes of .* do not match their CRC-32 checksum"):
        verify_checkpoint(path)


def test_a_lone_damaged_checkpoint_says_there_are_no_others(trained, tmp_path):
    _, run = trained
    path = tmp_path / "model.ckpt"
    path.write_bytes(damage((run / "checkpoints" / "last.ckpt").read_bytes(), "truncated"))
    with pytest.raises(CheckpointError, match=rf"; no other checkpoints in {tmp_path}$"):
        verify_checkpoint(path)


def test_other_damaged_checkpoints_are_marked(trained, tmp_path):
    _, run = trained
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(damage(data, "empty"))
    (tmp_path / "best-epoch=001.ckpt").write_bytes(damage(data, "truncated"))
    (tmp_path / "best-epoch=000.ckpt").write_bytes(data)
    with pytest.raises(CheckpointError) as error:
        verify_checkpoint(tmp_path / "last.ckpt")
    assert str(error.value).endswith(
        f"other checkpoints in {tmp_path}: best-epoch=000.ckpt, best-epoch=001.ckpt (damaged too)"
    )


def test_a_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.ckpt: no such checkpoint"):
        load_checkpoint(tmp_path / "none.ckpt")


def test_an_archive_of_objects_is_refused_without_advice_to_unpickle(tmp_path):
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {}, "value": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not a plain checkpoint")
    assert "fractions.Fraction" in message
    assert "weights_only=False" not in message and "\n" not in message
