"""Charge and spin: every family conditions on a structure's total charge and spin multiplicity (``charge_spin``),
stays equivariant, learns labels that differ only by charge, and a model trained without them says so."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import molecule
from tiny_models import tiny_config

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.models import build_model, registered_families
from mlip_cli.models.symmetry import ROTATION, draw, transform_batch
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure


def water(charge=None, spin=None) -> Structure:
    atoms = molecule("H2O")
    return Structure(numbers=atoms.numbers, positions=atoms.positions, charge=charge, spin=spin)


def energies(model, structures) -> torch.Tensor:
    batch = collate_graphs([structure_to_graph(s, model.cutoff, torch.float64) for s in structures])
    return model(batch, compute_forces=False)["energy"]


@pytest.mark.parametrize("family", registered_families())
def test_every_family_conditions_on_charge_and_spin(family):
    torch.manual_seed(0)
    model = build_model(tiny_config(family, charge_spin=True), dtype=torch.float64).eval()
    states = [water(), water(0.0, 1.0), water(1.0, 2.0), water(-1.0, 2.0), water(0.0, 3.0)]
    # a new model starts as its charge-blind counterpart: absent = neutral singlet, and nothing differs yet
    e = energies(model, states).detach()
    torch.testing.assert_close(e, e[0].expand_as(e), rtol=0, atol=1e-12)
    with torch.no_grad():
        for p in model.charge_spin.parameters():
            p.normal_(0, 0.5)
    e = energies(model, states).detach()
    assert float(e[0]) == pytest.approx(float(e[1]), abs=1e-12)  # no charge/spin given = neutral singlet
    assert len({round(float(x), 8) for x in e[1:]}) == 4  # every other state predicts its own energy
    if not model.exactly_equivariant:
        return  # transip learns its symmetry; the exact families must keep theirs with the condition
    # rotating a charged structure leaves its energy (invariance holds with the condition)
    batch = collate_graphs([structure_to_graph(water(1.0, 2.0), model.cutoff, torch.float64)])
    rotated = transform_batch(batch, draw(ROTATION, 1, torch.Generator().manual_seed(1)).double())
    a, b = model(batch, compute_forces=False)["energy"], model(rotated, compute_forces=False)["energy"]
    assert float(a) == pytest.approx(float(b), abs=1e-9)


def test_a_model_without_charge_says_it_ignores_a_charge():
    torch.manual_seed(0)
    model = build_model(tiny_config("tdn"), dtype=torch.float64).eval()
    atoms = molecule("H2O")
    atoms.calc = MLIPCalculator(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        neutral = atoms.get_potential_energy()
        atoms.info["charge"] = 1
        charged = atoms.get_potential_energy()
        atoms.info["charge"] = -1
        atoms.get_potential_energy()
    said = [w for w in caught if "trained without charge and spin" in str(w.message)]
    assert len(said) == 1 and "charge 1" in str(said[0].message)  # once, naming what it ignores
    assert charged == neutral


def test_one_model_fits_labels_that_differ_only_by_charge(tmp_path):
    """The same EMT geometries at charge 0 and +1, the cation labelled 4 eV + 0.3 eV per heavy atom higher: one
    model learns both, and the calculator's energy follows atoms.info["charge"]."""
    from mlip_cli.checkpoint import load_model
    from mlip_cli.train import Recipe, run_training
    from mlip_datasets.generate import generate
    from mlip_datasets.io import write_dataset

    neutral = list(generate("molecule", 40, seed=0))
    structures = []
    for s in neutral:
        heavy = int(np.sum(s.numbers > 1))
        structures.append(Structure(numbers=s.numbers, positions=s.positions, energy=s.energy, charge=0.0, spin=1.0))
        structures.append(
            Structure(
                numbers=s.numbers, positions=s.positions, energy=s.energy + 4.0 + 0.3 * heavy, charge=1.0, spin=2.0
            )
        )
    path = tmp_path / "charged.extxyz"
    write_dataset(path, structures)
    recipe = Recipe.from_dict(
        {
            "name": "charge",
            "model": {"family": "tdn", "cutoff": 4.0, "channels": 8, "lmax": 1, "num_radial": 4, "readout_hidden": 8},
            "data": {"train": str(path), "split": [0.8, 0.2], "batch_size": 8},
            "loss": {"energy": 1.0, "forces": 0.0},
            "optim": {"lr": 0.02, "warmup_steps": 5},
            "run": {"max_steps": 150, "valid_every": 150, "seed": 0, "threads": 1, "dtype": "float64"},
        }
    )
    run_training(recipe, tmp_path / "run")
    model = load_model(tmp_path / "run", dtype="float64")
    assert model.config.charge_spin  # set by training, because the data carries charge and spin
    gaps_true, gaps_model = [], []
    for s in neutral[:10]:
        atoms = s.to_atoms()
        atoms.calc = MLIPCalculator(model)
        atoms.info.update(charge=0, spin=1)
        e0 = atoms.get_potential_energy()
        atoms.info.update(charge=1, spin=2)
        e1 = atoms.get_potential_energy()
        gaps_model.append(e1 - e0)
        gaps_true.append(4.0 + 0.3 * int(np.sum(s.numbers > 1)))
    error = np.abs(np.array(gaps_model) - np.array(gaps_true))
    assert error.mean() < 0.1 * np.mean(gaps_true), (gaps_model, gaps_true)


def test_the_exported_model_takes_charge_and_spin():
    from ase.neighborlist import primitive_neighbor_list

    from mlip_cli.export import DeployedPotential, export_program

    torch.manual_seed(0)
    model = build_model(tiny_config("tdn", charge_spin=True), dtype=torch.float64).eval()
    with torch.no_grad():
        for p in model.charge_spin.parameters():
            p.normal_(0, 0.5)
    exported = export_program(model).module()
    atoms = molecule("H2O")
    i, j, shifts = primitive_neighbor_list("ijS", [False] * 3, np.eye(3), atoms.positions, model.cutoff)

    def inputs(charge, spin):
        f64 = torch.float64
        return [
            torch.tensor(atoms.positions),
            torch.tensor(atoms.numbers),
            torch.zeros(3, 3, dtype=f64),
            torch.zeros(3, dtype=torch.bool),
            torch.tensor(np.stack([i, j])),
            torch.tensor(shifts, dtype=f64),
            torch.tensor(charge, dtype=f64),
            torch.tensor(spin, dtype=f64),
        ]

    python = DeployedPotential(model)
    neutral, cation = float(exported(*inputs(0.0, 1.0))[0]), float(exported(*inputs(1.0, 2.0))[0])
    assert neutral == pytest.approx(float(python(*inputs(0.0, 1.0))[0]), rel=1e-12)
    assert cation == pytest.approx(float(python(*inputs(1.0, 2.0))[0]), rel=1e-12)
    assert abs(cation - neutral) > 1e-3


def test_a_run_from_before_charge_and_spin_resumes_as_it_was_built(tmp_path):
    """A checkpoint written before models read charge and spin has no ``charge_spin``: resuming it on data that
    carries charge and spin keeps the charge-blind model instead of refusing its weights."""
    import yaml

    from mlip_cli.checkpoint import load_checkpoint, save_checkpoint
    from mlip_cli.train import plan_run, run_training
    from mlip_datasets.generate import generate
    from mlip_datasets.io import write_dataset

    path = tmp_path / "mols.extxyz"
    write_dataset(path, generate("molecule", 12, seed=0))  # charge and spin on every record
    recipe = {
        "name": "old",
        "model": {"family": "tdn", "cutoff": 4.0, "channels": 4, "lmax": 1, "num_radial": 4, "charge_spin": False},
        "data": {"train": str(path), "split": [0.75, 0.25], "batch_size": 4},
        "run": {"max_steps": 2, "valid_every": 2, "threads": 1},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    plan = plan_run(tmp_path / "r.yaml", out=run)
    run_training(plan.recipe, plan.run_dir)
    # make it look like a run of the older code: no charge_spin anywhere
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run / name)
        ckpt.pop("path", None)
        del ckpt["model_config"]["charge_spin"]
        del ckpt["recipe"]["model"]["charge_spin"]
        save_checkpoint(run / name, ckpt)
    old = yaml.safe_load((run / "recipe.yaml").read_text())
    del old["model"]["charge_spin"]
    (run / "recipe.yaml").write_text(yaml.safe_dump(old))
    resumed = plan_run(None, resume=run, overrides=["run.max_steps=4"])
    result = run_training(resumed.recipe, resumed.run_dir, resume=True)
    assert result.steps == 4
    assert load_checkpoint(run / "last.pt")["model_config"]["charge_spin"] is False
