"""Label keys (MACE's ``REF_energy``/``REF_forces``) and E0s (isolated atoms, files, mappings) in training."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.calculators.emt import EMT
from cli_runner import mlip
from train_testlib import rattled_metal_slabs, tiny_recipe, write_recipe

from mlip_cli.train import Recipe
from mlip_cli.train.e0s import resolve_e0s
from mlip_cli.train.recipe import RecipeError


def emt_isolated_energy(symbol: str) -> float:
    atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
    atom.calc = EMT()
    return float(atom.get_potential_energy())


def write_mace_style(path, n: int, seed: int, isolated: bool) -> None:
    """Slabs with labels under REF_energy / REF_forces (MACE's default keys), and optionally the two isolated
    atoms tagged ``config_type=IsolatedAtom`` as MACE's training files carry them."""
    frames = []
    if isolated:
        for symbol in ("Cu", "Au"):
            atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
            atom.info.update(config_type="IsolatedAtom", REF_energy=emt_isolated_energy(symbol))
            frames.append(atom)
    for s in rattled_metal_slabs(n, seed):
        atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
        atoms.info["REF_energy"] = s.energy
        atoms.arrays["REF_forces"] = s.forces
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")


@pytest.fixture(scope="module")
def mace_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mace")
    write_mace_style(root / "train.xyz", 16, seed=3, isolated=True)
    write_mace_style(root / "valid.xyz", 6, seed=4, isolated=False)
    return root


def test_wrong_label_keys_are_one_line_before_training(mace_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(mace_files / "train.xyz"))
    result = mlip("train", recipe, "--valid-data", mace_files / "valid.xyz", "--out", tmp_path / "run", "-q")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mlip: error: ")
    assert "train.xyz: no energy, forces or stress labels (keys 'energy', 'forces', 'stress')" in lines[0]
    assert "--energy-key" in lines[0]
    # the energies found but not the forces: the missing key and the record are named
    only_energy = mlip("train", recipe, "--out", tmp_path / "run", "-q", "--energy-key", "REF_energy")
    assert only_energy.exit_code == 2
    assert "record 2: no forces label under the key 'forces', which loss.forces = 10 needs" in only_energy.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_mace_keys_and_isolated_atoms_train_and_evaluate(mace_files, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(mace_files / "train.xyz", run={"max_steps": 8}))
    run = tmp_path / "run"
    args = ("--valid-data", mace_files / "valid.xyz", "--out", run, "-q")
    result = mlip("train", recipe, *args, "--energy-key", "REF_energy", "--forces-key", "REF_forces")
    assert result.exit_code == 0, result.output

    # the isolated atoms are the E0s, exactly, and never a training structure
    out = yaml.safe_load((run / "result.yaml").read_text())
    assert out["e0s"] == {"Cu": emt_isolated_energy("Cu"), "Au": emt_isolated_energy("Au")}
    assert out["e0s_source"] == "isolated atoms in the training data"
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["statistics"]["structures"] == 16
    assert ckpt["model_config"]["e0s"] == {29: emt_isolated_energy("Cu"), 79: emt_isolated_energy("Au")}
    assert ckpt["recipe"]["data"]["keys"] == {"energy": "REF_energy", "forces": "REF_forces"}

    # eval reads the same convention without options (the keys the model was trained with)
    scored = mlip("eval", run, mace_files / "valid.xyz", "--json", "--rotations", "0", "--parity", tmp_path / "p.png")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout)["metrics"]
    assert metrics["forces_rmse"] > 0 and "energy_per_atom_rmse" in metrics
    # naming other keys finds no labels: one line that says which keys were looked for
    wrong = mlip("eval", run, mace_files / "valid.xyz", "--energy-key", "E", "--forces-key", "F", "--rotations", "0")
    assert wrong.exit_code == 2 and "looked for 'E' and 'F'" in wrong.output


def test_e0s_file_mapping_average_and_least_squares(tmp_path):
    rng = np.random.default_rng(0)
    elements = [1, 6, 8]
    comp = rng.integers(0, 5, size=(40, 3)).astype(float)
    truth = np.array([-13.6, -1029.5, -2041.0])
    energies = comp @ truth + rng.normal(0, 0.01, 40)

    # least squares keeps known E0s fixed and fits the rest (oracle: lstsq on the residual)
    e0s, source = resolve_e0s("auto", comp, energies, elements, {8: -2040.0})
    expected, *_ = np.linalg.lstsq(comp[:, :2], energies - comp[:, 2] * -2040.0, rcond=None)
    assert e0s[8] == -2040.0 and e0s[1] == pytest.approx(expected[0]) and e0s[6] == pytest.approx(expected[1])
    assert source == "isolated atoms in the training data; least squares for Z=[1, 6]"
    plain, _ = resolve_e0s("least_squares", comp, energies, elements, {8: -2040.0})
    assert [plain[z] for z in elements] == pytest.approx(np.linalg.lstsq(comp, energies, rcond=None)[0].tolist())

    average, _ = resolve_e0s("average", comp, energies, elements, {})
    assert list(average.values()) == pytest.approx([energies.sum() / comp.sum()] * 3)

    mapping, _ = resolve_e0s({"H": -13.0, "C": -1000.0, 8: -2000.0}, comp, energies, elements, {})
    assert mapping == {1: -13.0, 6: -1000.0, 8: -2000.0}
    with pytest.raises(RecipeError, match=r"gives no E0 for element\(s\) O"):
        resolve_e0s({"H": -13.0, "C": -1000.0}, comp, energies, elements, {})

    # a file of isolated atoms in MACE's layout (untagged single atoms count too, as in 3BPA's iso_atoms.xyz)
    iso = tmp_path / "iso.xyz"
    frames = []
    for symbol, energy in (("H", -13.5), ("C", -1029.4), ("O", -2041.1)):
        atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        atom.info["energy"] = energy
        frames.append(atom)
    ase.io.write(iso, frames, format="extxyz")
    from_file, source = resolve_e0s(str(iso), comp, energies, elements, {})
    assert from_file == {1: -13.5, 6: -1029.4, 8: -2041.1} and source == f"isolated atoms from {iso}"
    with pytest.raises(RecipeError, match="neither a method"):
        resolve_e0s(str(tmp_path / "missing.xyz"), comp, energies, elements, {})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"keys": {"energies": "E"}}, "unknown label data.keys.energies"),
        ({"keys": {"energy": ""}}, "data.keys.energy must be a key name"),
        ({"e0s": {"H": "x"}}, "data.e0s.H must be a finite number"),
        ({"e0s": 3}, "data.e0s must be one of auto, least_squares, average"),
        ({"fixed_tags": "0"}, "data.fixed_tags must be a list"),
    ],
)
def test_bad_data_keys_and_e0s_are_refused(tmp_path, data, message):
    recipe = tiny_recipe(tmp_path / "x.xyz")
    recipe["data"].update(data)
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict(recipe)


def test_hdf5_units_from_the_recipe(tmp_path):
    """A group-layout HDF5 file that declares no units trains once data.units names them, in eV."""
    import h5py
    from ase import units as ase_units

    rng = np.random.default_rng(0)
    coords = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + rng.normal(0, 0.05, (12, 3, 3))
    energies = -76.4 + rng.normal(0, 1e-3, 12)  # Hartree
    path = tmp_path / "water.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("water")
        g["atomic_numbers"] = np.array([8, 1, 1])
        g["coordinates"] = coords
        g["energies"] = energies
        g["forces"] = rng.normal(0, 0.01, (12, 3, 3))  # Hartree/A
    recipe = tiny_recipe(path, run={"max_steps": 2}, data={"e0s": "average"})
    refused = mlip("train", write_recipe(tmp_path / "r.yaml", recipe), "--out", tmp_path / "run", "-q")
    assert refused.exit_code == 2 and "no units for" in refused.output
    recipe["data"]["units"] = {"energy": "hartree", "length": "angstrom"}
    done = mlip("train", write_recipe(tmp_path / "r.yaml", recipe), "--out", tmp_path / "run", "-q")
    assert done.exit_code == 0, done.output
    e0s = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model_config"]["e0s"]
    # the mean energy per atom of the training split, in eV (frames differ by ~1e-5 relative, so any split agrees)
    expected = energies.mean() * ase_units.Hartree / 3
    assert e0s[8] == pytest.approx(expected, rel=2e-4) and e0s[1] == e0s[8]


def test_the_shipped_mace_recipe_reads_mace_files_as_they_come(mace_files, tmp_path):
    run = tmp_path / "run"
    small = (
        "--set",
        "model.channels=4",
        "--set",
        "model.lmax=1",
        "--set",
        "run.max_steps=2",
        "--set",
        "run.time_budget=null",
    )
    result = mlip("train", "mace/tdn", "--data", mace_files / "train.xyz", "--out", run, "-q", *small)
    assert result.exit_code == 0, result.output
    out = yaml.safe_load((run / "result.yaml").read_text())
    assert out["e0s"] == {"Cu": emt_isolated_energy("Cu"), "Au": emt_isolated_energy("Au")}
