"""``mlip predict`` with an ensemble: the mean as labels, the spread in info, equal to the calculator's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.io import read, write
from cli_runner import mlip
from test_predict import UNKNOWN, _frames
from tiny_models import tiny_config

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.checkpoint import save_checkpoint
from mlip_cli.models import build_model
from mlip_datasets.io import open_dataset

SPREAD = ("energy_std", "forces_std", "forces_uncertainty", "stress_std")


def _save(model, path):
    state = {"model_config": model.config.to_dict(), "dtype": "float64", "model_state": model.state_dict()}
    return save_checkpoint(path, {**state, "ema_state": None})


@pytest.fixture(scope="module")
def ensemble_checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = build_model({**tiny_config("tdn", lmax=1, avg_num_neighbors=10.0), "ensemble": 3}, dtype=torch.float64)
    model.set_statistics(e0s={1: -1.0, 6: -4.0, 8: -2.0, 28: -5.0, 29: -3.0, 79: -3.5})
    return _save(model, tmp_path_factory.mktemp("ensemble") / "ensemble.pt")


@pytest.fixture(scope="module")
def structures(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "structures.extxyz"
    write(path, _frames())
    return path


@pytest.fixture(scope="module")
def expected(ensemble_checkpoint, structures):
    """The calculator's results for each input frame the model knows."""
    calc = MLIPCalculator.from_checkpoint(ensemble_checkpoint)
    out = []
    for k, atoms in enumerate(read(structures, ":")):
        if k == UNKNOWN:
            continue
        atoms.calc = calc
        atoms.get_stress() if atoms.pbc.any() else atoms.get_forces()  # the slab counts as periodic
        out.append(dict(calc.results))
    return out


def _check_spread(info: dict, want: dict, names: dict[str, str], per_atom: dict | None = None) -> None:
    """``per_atom``: where the per-atom spreads are (extxyz: per-atom columns), else ``info``."""
    assert info[names["energy_std"]] == pytest.approx(want["energy_std"], rel=1e-10, abs=1e-12)
    for key in ("forces_std", "forces_uncertainty"):
        got = (info if per_atom is None else per_atom)[names[key]]
        atol = 1e-12 if per_atom is None else 6e-9  # extxyz columns carry 8 decimals, as ASE writes forces
        np.testing.assert_allclose(got, want[key], rtol=1e-10, atol=atol, err_msg=key)
        assert per_atom is None or names[key] not in info
    if "stress" in want:
        np.testing.assert_allclose(info[names["stress_std"]], want["stress_std"], rtol=1e-10, atol=1e-12)
    else:
        assert names["stress_std"] not in info


def test_extxyz_holds_the_spread_ase_reads_back(ensemble_checkpoint, structures, expected, tmp_path):
    out = tmp_path / "predicted.extxyz"
    result = mlip("predict", ensemble_checkpoint, structures, "--out", out, "--batch-atoms", 20)
    assert result.exit_code == 0, result.output
    frames = read(out, ":")
    assert len(frames) == len(expected)
    names = {k: k for k in SPREAD}
    for atoms, want in zip(frames, expected):
        assert atoms.calc.results["energy"] == pytest.approx(want["energy"], rel=1e-10)
        np.testing.assert_allclose(atoms.calc.results["forces"], want["forces"], rtol=0, atol=6e-9)
        _check_spread(atoms.info, want, names, per_atom=atoms.arrays)  # per-atom columns, as ASE writes forces
        assert atoms.arrays["forces_std"].shape == (len(atoms), 3)
        assert atoms.arrays["forces_uncertainty"].shape == (len(atoms),)


def test_the_spread_follows_the_label_keys_and_other_formats(ensemble_checkpoint, structures, expected, tmp_path):
    out = tmp_path / "mace.xyz"
    keys = ["--energy-key", "MACE_energy", "--forces-key", "MACE_forces", "--stress-key", "MACE_stress"]
    assert mlip("predict", ensemble_checkpoint, structures, "-o", out, *keys).exit_code == 0
    names = {k: "MACE_" + k for k in SPREAD}
    for atoms, want in zip(read(out, ":"), expected):
        _check_spread(atoms.info, want, names, per_atom=atoms.arrays)
        assert not set(SPREAD) & set(atoms.info)
    database = tmp_path / "predicted.aselmdb"
    assert mlip("predict", ensemble_checkpoint, structures, "-o", database).exit_code == 0
    with open_dataset(database) as reader:
        for s, want in zip(reader, expected):
            _check_spread(s.info, want, {k: k for k in SPREAD})


def test_a_plain_model_writes_no_spread(tmp_path, structures):
    torch.manual_seed(0)
    plain = _save(build_model(tiny_config("tdn", lmax=1), dtype=torch.float64), tmp_path / "plain.pt")
    out = tmp_path / "plain.extxyz"
    assert mlip("predict", plain, structures, "-o", out).exit_code == 0
    for atoms in read(out, ":"):
        assert not set(SPREAD) & set(atoms.info)
