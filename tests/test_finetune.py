"""Fine-tuning from a trained model (``init_from``, ``load_pretrained_weights``, ``freeze``).

One tiny copper potential is pretrained for the module on rattled EMT copper cells. On a
handful of strained cells it is then fine-tuned, and compared with the same model trained from
scratch for the same steps and learning rate on held-out strained cells.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import zipfile
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from torch_geometric.data import Batch

from equimol.data import compute_statistics
from equimol.data.graph import atoms_to_graph
from equimol.models.base import Potential
from equimol.models.equivariant import EquivariantPotential
from equimol.train import AtomsDataModule, PotentialModule, freeze_parameters, load_potential, load_pretrained_weights
from equimol.train.cli import main

CUTOFF = 4.0
ARCHITECTURE = {"cutoff": CUTOFF, "channels": 8, "l_max": 1, "num_layers": 2}
CU, AG = 29, 47
FT_STEPS_PER_EPOCH, FT_EPOCHS, FT_LR = 5, 4, 3e-3  # 10 frames, batch 2: 20 steps at 3e-3


def copper(species: list[str] = ["Cu"], **options) -> EquivariantPotential:
    return EquivariantPotential(species, **{**ARCHITECTURE, **options})


def adamw(lr: float):
    return functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.0)


def strained_copper(rng: np.random.Generator, n: int) -> list[ase.Atoms]:
    """32-atom fcc Cu cells, volume changed by 3-6 % (either sign), sheared by up to 5 % and
    rattled by 0.1 Å, with EMT energy and forces."""
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        deformation = np.eye(3) * (1 + rng.uniform(0.03, 0.06) * rng.choice([-1, 1])) ** (1 / 3)
        deformation[[0, 1, 0], [1, 2, 2]] += rng.uniform(-0.05, 0.05, 3)
        atoms.set_cell(atoms.cell[:] @ deformation, scale_atoms=True)
        atoms.rattle(0.1, rng=rng)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    return frames


def fit(module: PotentialModule, folder: Path, train: list[ase.Atoms], held_out: list[ase.Atoms],
        epochs: int, batch_size: int) -> pl.Trainer:
    """Fit ``module`` in ``folder`` on ``train`` (``held_out`` is the validation file, not evaluated)."""
    folder.mkdir(parents=True, exist_ok=True)
    ase.io.write(folder / "train.xyz", train)
    ase.io.write(folder / "held_out.xyz", held_out)
    data = AtomsDataModule(cutoff=CUTOFF, path=str(folder / "train.xyz"), val_path=str(folder / "held_out.xyz"),
                           batch_size=batch_size, cache_dir=str(folder / "cache"))
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, inference_mode=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=folder)
    trainer.fit(module, data)
    return trainer


def graphs(frames: list[ase.Atoms]) -> Batch:
    return Batch.from_data_list([
        atoms_to_graph(a, CUTOFF, {"energy": a.get_potential_energy(), "forces": a.get_forces()}) for a in frames
    ])


def pretrained_model(path: Path) -> EquivariantPotential:
    """The pretrained potential (its checkpoint was written from Python: the architecture is given)."""
    return load_potential(str(path), model=copper()).model


def force_rmse(model: torch.nn.Module, batch: Batch) -> float:
    """Force RMSE (eV/Å) of ``model`` on ``batch``."""
    return float((model(batch)["forces"].detach() - batch.forces).pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, emt_copper):
    """A checkpoint of a tiny Cu potential fitted for 50 steps to 20 rattled 32-atom EMT cells."""
    folder = tmp_path_factory.mktemp("pretrained")
    rng = np.random.default_rng(0)
    frames = [emt_copper(rng, repeat=(2, 2, 2), strain=0.01, rattle=0.1) for _ in range(21)]
    torch.manual_seed(0)
    module = PotentialModule(copper(), optimizer=adamw(1e-2), lr_scheduler=None)
    trainer = fit(module, folder, frames[:20], frames[20:], epochs=10, batch_size=4)
    path = folder / "pretrained.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def strained():
    """10 strained cells to fine-tune on and 6 held-out ones."""
    rng = np.random.default_rng(1)
    return strained_copper(rng, 10), strained_copper(rng, 6)


def trained_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}


# ---------------------------------------------------------------------------- accuracy
def test_fine_tuning_reaches_a_force_error_that_training_from_scratch_does_not(pretrained, strained, tmp_path):
    train, held_out = strained
    batch = graphs(held_out)
    pretrained_rmse = force_rmse(pretrained_model(pretrained), batch)
    errors = {}
    for name, options in (("fine-tuned", {"init_from": str(pretrained), "init_statistics": "keep"}), ("scratch", {})):
        torch.manual_seed(0)
        module = PotentialModule(copper(), optimizer=adamw(FT_LR), lr_scheduler=None, **options)
        trainer = fit(module, tmp_path / name, train, held_out, epochs=FT_EPOCHS, batch_size=2)
        assert trainer.global_step == FT_STEPS_PER_EPOCH * FT_EPOCHS
        errors[name] = force_rmse(module.model, batch)
    print(f"held-out force RMSE (eV/Å): pretrained {pretrained_rmse:.3f}, fine-tuned {errors['fine-tuned']:.3f}, "
          f"from scratch {errors['scratch']:.3f}")
    # seen: pretrained 0.53, fine-tuned 0.44, from scratch 1.18 (force RMS of the labels 1.44 eV/Å)
    assert errors["fine-tuned"] < 0.7 * errors["scratch"]
    assert errors["fine-tuned"] < pretrained_rmse  # it learned from the new data, not only kept the old


# ------------------------------------------------------------------- weights and species
def test_same_species_loads_every_tensor_as_trained(pretrained):
    model = copper()
    report = load_pretrained_weights(model, pretrained, statistics="keep")
    trained = trained_state(pretrained)
    state = model.state_dict()
    assert report.copied_species == (CU,) and report.new_species == () and report.loaded == len(trained)
    for name, value in trained.items():
        assert torch.equal(state[name], value), name


def test_added_element_copies_rows_by_atomic_number_and_keeps_predictions(pretrained, strained):
    trained = trained_state(pretrained)
    torch.manual_seed(3)
    model = copper(["Ag", "Cu"])  # Cu is species 1 here, 0 in the trained model
    fresh = {name: value.clone() for name, value in model.state_dict().items()}
    report = load_pretrained_weights(model, pretrained, statistics="keep")
    assert report.copied_species == (CU,) and report.new_species == (AG,)
    state = model.state_dict()
    for name in ("network.scale_shift.shifts", "network.scale_shift.scales"):
        assert state[name][1] == trained[name][0]  # Cu row: identical
        assert state[name][0] == fresh[name][0]  # Ag row: not copied
    # the embedding weight is [species, channels]; e3nn divides it by sqrt(number of species),
    # so the Cu row is the trained one times sqrt(2 / 1) and gives the same features
    embedding = "network.embedding.linear.weight"
    rows, old = state[embedding].view(2, -1), trained[embedding].view(1, -1)
    torch.testing.assert_close(rows[1], old[0] * math.sqrt(2.0), rtol=1e-6, atol=0)
    assert torch.equal(rows[0], fresh[embedding].view(2, -1)[0])
    for name, value in trained.items():
        if "scale_shift" not in name and name != embedding:
            assert torch.equal(state[name], value), name
    # so on copper the extended model is the trained one
    batch = graphs(strained[1][:2])
    expected = pretrained_model(pretrained)(batch)
    got = model(batch)
    torch.testing.assert_close(got["energy"], expected["energy"], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["forces"], expected["forces"], rtol=0, atol=1e-5)


def test_elements_left_out_of_the_new_species_are_dropped_and_self_connections_follow(emt_copper):
    torch.manual_seed(0)
    source = copper(["Ag", "Cu"], self_connection=True)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model = copper(["Cu", "Au"], self_connection=True)
    report = load_pretrained_weights(model, source, statistics="keep")
    assert (report.copied_species, report.new_species, report.dropped_species) == ((CU,), (79,), (AG,))
    batch = graphs([emt_copper(0, repeat=(2, 1, 1), rattle=0.1)])
    torch.testing.assert_close(model(batch)["forces"], source(batch)["forces"], rtol=0, atol=1e-5)


class ElementTable(Potential):
    """A model of one's own with a per-species table ``[species, 2]`` (its forward is not needed)."""

    def __init__(self, species: list[str]) -> None:
        super().__init__(species, cutoff=0.0)
        self.table = torch.nn.Parameter(torch.randn(len(self.atomic_numbers), 2))


def test_a_models_own_per_species_tensor_is_copied_by_atomic_number_once_named():
    source, model = ElementTable(["Cu", "Ag"]), ElementTable(["Ag", "Au", "Cu"])
    with pytest.raises(ValueError, match=r"table has shape \[2, 2\] .* \[3, 2\].*species_axes"):
        load_pretrained_weights(model, source, statistics="keep")
    fresh = model.table.detach().clone()
    load_pretrained_weights(model, source, statistics="keep", species_axes={"table": 0})
    assert torch.equal(model.table[0], source.table[1]) and torch.equal(model.table[2], source.table[0])
    assert torch.equal(model.table[1], fresh[1])  # Au: not in the trained model


# ------------------------------------------------------------------------------ errors
def test_shape_mismatch_names_the_tensor_both_shapes_and_the_config_key(pretrained, tmp_path):
    narrow = copper(channels=4)
    with pytest.raises(ValueError) as error:
        load_pretrained_weights(narrow, pretrained, statistics="keep")
    message = str(error.value)
    assert "network.embedding.linear.weight has shape [8] in the trained model but [4]" in message
    assert "likely model.init_args.model.init_args.channels" in message
    # with both configs known (a checkpoint of equimol fit records its model's), the differing
    # key is named with its two values; a checkpoint that does not record its elements (written
    # before they were recorded) has them read from the model its config builds, before comparing
    config = {"class_path": "equimol.models.equivariant.EquivariantPotential",
              "init_args": {"species": ["Cu"], **ARCHITECTURE}}
    checkpoint = torch.load(pretrained, weights_only=True)
    checkpoint["hyper_parameters"]["model"] = config
    del checkpoint["equimol"]["atomic_numbers"]
    torch.save(checkpoint, tmp_path / "with_config.ckpt")
    with pytest.raises(ValueError, match=r"init_args\.channels \(8 in the trained model, 4 here\)"):
        load_pretrained_weights(narrow, tmp_path / "with_config.ckpt", statistics="keep",
                                model_config={**config, "init_args": {**config["init_args"], "channels": 4}})
    with pytest.raises(ValueError, match=r"num_layers: 2 in the trained model, 3 here"):
        load_pretrained_weights(copper(num_layers=3), pretrained, statistics="keep")


def test_a_pt2_package_is_refused_naming_the_checkpoint_to_use(tmp_path):
    package = tmp_path / "copper.pt2"
    package.write_bytes(b"PK\x03\x04 compiled code")
    renamed = tmp_path / "copper.bin"  # a package by its contents
    with zipfile.ZipFile(renamed, "w") as archive:
        archive.writestr("copper/archive_format", "pt2")
        archive.writestr("copper/data/aotinductor/model/model.wrapper.cpp", "")
    model = copper()
    for source, attempt in ((package, lambda: load_pretrained_weights(model, package, statistics="keep")),
                            (package, lambda: PotentialModule(model, init_from=str(package))),
                            (renamed, lambda: load_pretrained_weights(model, renamed, statistics="keep"))):
        with pytest.raises(ValueError, match=rf"{source.name} is a compiled \.pt2 package.*not weights.*"
                                             r"fine-tune from the checkpoint it was compiled from"):
            attempt()


def test_freeze_patterns_that_match_nothing_list_the_prefixes():
    model = copper()
    with pytest.raises(ValueError) as error:
        freeze_parameters(model, ["embeding*"])
    assert "'embeding*' matches no parameter" in str(error.value)
    assert "network.embedding, network.radial, network.layers.0, network.layers.1, network.readout" in str(error.value)
    with pytest.raises(ValueError, match="nothing would train"):
        freeze_parameters(model, ["*"])
    assert all(p.requires_grad for p in model.parameters())  # a refused call freezes nothing
    frozen = freeze_parameters(model, ["embedding*", "network.layers.0"])
    assert frozen[0] == "network.embedding.linear.weight"
    assert all(name.startswith(("network.embedding.", "network.layers.0.")) for name in frozen)
    module = PotentialModule(model, optimizer=adamw(1e-3), lr_scheduler=None)
    optimized = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert optimized == {id(p) for name, p in model.named_parameters() if name not in frozen}


# -------------------------------------------------------------------------- statistics
def test_keep_leaves_the_trained_shifts_and_recompute_sets_them_from_the_new_data(pretrained, strained):
    trained = trained_state(pretrained)
    # (strained copper has as many neighbours within 4 Å as the pretraining cells: another
    # count shows that the trained one is kept)
    statistics = dataclasses.replace(compute_statistics(graphs(strained[0]).to_data_list()), avg_num_neighbors=25.0)
    fresh = copper(["Cu", "Ag"])
    fresh.set_statistics(statistics)  # what a fresh fit starts from
    expected = fresh.state_dict()
    for name in ("network.scale_shift.shifts", "network.scale_shift.scales"):
        assert not torch.isclose(trained[name][0], expected[name][0], rtol=1e-3)
    for mode in ("keep", "recompute"):
        model = copper(["Cu", "Ag"])
        load_pretrained_weights(model, pretrained, statistics=mode, data_statistics=statistics)
        state = model.state_dict()
        for name in ("network.scale_shift.shifts", "network.scale_shift.scales"):
            wanted = trained[name][0] if mode == "keep" else expected[name][0]
            assert state[name][0] == wanted, (mode, name)
            assert state[name][1] == expected[name][1], (mode, name)  # the new element's from the data
        # the neighbour normalisation stays as trained: the weights were learned with it
        name = "network.layers.0.conv.avg_num_neighbors"
        assert state[name] == trained[name] and expected[name] == 25.0
    with pytest.raises(ValueError, match="data_statistics"):
        load_pretrained_weights(copper(), pretrained)


# ----------------------------------------------------------------- from a config file
def test_fine_tuned_fit_from_a_config_loads_and_resumes_without_the_original_checkpoint(pretrained, strained, tmp_path):
    original = tmp_path / "original.ckpt"
    shutil.copy(pretrained, original)
    train, held_out = strained
    ase.io.write(tmp_path / "train.xyz", train[:4])
    ase.io.write(tmp_path / "held_out.xyz", held_out[:2])
    config = {
        "trainer": {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0},
        "model": {"class_path": "equimol.train.PotentialModule", "init_args": {
            "model": {"class_path": "equimol.models.equivariant.EquivariantPotential",
                      "init_args": {"species": ["Cu", "Ag"], **ARCHITECTURE}},
            "init_from": str(original), "init_statistics": "recompute", "freeze": ["embedding*", "layers.0.*"],
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3, "weight_decay": 0.0}}}},
        "data": {"class_path": "equimol.train.AtomsDataModule", "init_args": {
            "cutoff": CUTOFF, "path": str(tmp_path / "train.xyz"), "val_path": str(tmp_path / "held_out.xyz"),
            "batch_size": 2}},
        "parity_plot": {"every_n_epochs": 100}, "loss_curve": {"every_n_epochs": 100},
    }
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run = tmp_path / "run"
    main(["fit", "--config", str(path), "--trainer.default_root_dir", str(run)])
    trained = trained_state(original)
    original.unlink()  # nothing below needs it

    last = run / "checkpoints" / "last.ckpt"
    record = torch.load(last, weights_only=True)["equimol"]
    assert record["atomic_numbers"] == [CU, AG]
    assert record["init_from"]["copied_species"] == [CU] and record["init_from"]["new_species"] == [AG]
    assert "network.embedding.linear.weight" in record["init_from"]["frozen"]
    model = load_potential(str(last)).model  # the model and its weights come from the checkpoint alone
    assert model.atomic_numbers == (CU, AG)
    state = model.state_dict()
    # frozen parameters are as trained after the steps (the Cu row of the embedding up to e3nn's
    # sqrt(species) factor), the others moved
    for name, value in trained.items():
        if name.startswith("network.layers.0.") and name.endswith("weight"):
            assert torch.equal(state[name], value), name
    embedding = state["network.embedding.linear.weight"].view(2, -1)[0]
    torch.testing.assert_close(embedding, trained["network.embedding.linear.weight"] * math.sqrt(2.0),
                               rtol=1e-6, atol=0)
    assert not torch.equal(state["network.layers.1.self_interaction.weight"],
                           trained["network.layers.1.self_interaction.weight"])

    # the file name is data, never read as something to import (test.ckpt looks like the module test)
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["init_from"] = "test.ckpt"
    torch.save(checkpoint, tmp_path / "renamed.ckpt")
    assert load_potential(str(tmp_path / "renamed.ckpt")).model.atomic_numbers == (CU, AG)

    # resuming reads the run's own checkpoint, not the deleted original
    main(["fit", "--config", str(path), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "2",
          "--ckpt_path", "last"])
    assert torch.load(last, weights_only=True)["epoch"] == 1
