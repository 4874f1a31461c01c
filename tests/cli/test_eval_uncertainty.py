"""``mlip eval`` of an ensemble: calibration numbers equal to ones computed from the calculator with scipy."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import scipy.stats
import torch
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import read, write
from cli_runner import mlip
from tiny_models import tiny_config

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.checkpoint import save_checkpoint
from mlip_cli.models import build_model
from mlip_cli.uncertainty import STD_FLOOR, miscalibration_area

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(model, path):
    state = {"model_config": model.config.to_dict(), "dtype": "float64", "model_state": model.state_dict()}
    return save_checkpoint(path, {**state, "ema_state": None})


@pytest.fixture(scope="module")
def ensemble_checkpoint(tmp_path_factory):
    torch.manual_seed(4)
    model = build_model({**tiny_config("tdn", lmax=1, avg_num_neighbors=10.0), "ensemble": 3}, dtype=torch.float64)
    model.set_statistics(e0s={28: -0.5, 29: -0.3, 79: -0.2})
    return _save(model, tmp_path_factory.mktemp("ensemble") / "ensemble.pt")


@pytest.fixture(scope="module")
def emt_data(tmp_path_factory):
    """EMT-labelled Cu/Ni/Au cells rattled by growing amplitudes, and a slab with its bottom layer fixed."""
    frames = []
    for k, amplitude in enumerate(np.linspace(0.02, 0.25, 9)):
        atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
        atoms.numbers[k % 4] = (28, 79, 29, 28)[k % 4]
        atoms.rattle(amplitude, seed=k)
        frames.append(atoms)
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=4.0)
    slab.set_constraint(FixAtoms(mask=slab.positions[:, 2] < slab.positions[:, 2].mean()))
    slab.rattle(0.1, seed=20)
    slab.info.clear()  # adsorbate_info: a dict extxyz cannot store
    frames.append(slab)
    for atoms in frames:
        atoms.calc = EMT()
        atoms.get_forces()
    path = tmp_path_factory.mktemp("data") / "emt.extxyz"
    write(path, frames)
    return path


def _oracle(checkpoint, data) -> dict:
    """Per-structure and per-component numbers from the calculator and the labels, scored with scipy."""
    calc = MLIPCalculator.from_checkpoint(checkpoint)
    structure_unc, structure_rmse, f_err, f_std, e_err, e_std = [], [], [], [], [], []
    for labelled in read(data, ":"):
        ref_energy, ref_forces = labelled.get_potential_energy(), labelled.get_forces(apply_constraint=False)
        free = np.ones(len(labelled), dtype=bool)
        for constraint in labelled.constraints:
            free[constraint.index] = False
        atoms = labelled.copy()
        atoms.calc = calc
        atoms.get_forces()
        r = calc.results
        err = (r["forces"] - ref_forces)[free]
        structure_unc.append(np.sqrt(np.mean(r["forces_std"][free] ** 2)))
        structure_rmse.append(np.sqrt(np.mean(err**2)))
        f_err.append(err.reshape(-1))
        f_std.append(r["forces_std"][free].reshape(-1))
        e_err.append((r["energy"] - ref_energy) / len(atoms))
        e_std.append(r["energy_std"] / len(atoms))
    f_err, f_std = np.concatenate(f_err), np.concatenate(f_std)
    e_err, e_std = np.array(e_err), np.array(e_std)

    def nll(error, std):
        return -scipy.stats.norm.logpdf(error, scale=np.maximum(std, STD_FLOOR)).mean()

    return {
        "spearman": scipy.stats.spearmanr(structure_unc, structure_rmse).statistic,
        "forces_nll": nll(f_err, f_std),
        "energy_per_atom_nll": nll(e_err, e_std),
        "miscalibration_area": miscalibration_area(f_err, f_std),
        "mean_forces_std": f_std.mean(),
    }


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_eval_reports_the_calibration_and_draws_it(ensemble_checkpoint, emt_data, tmp_path):
    png = tmp_path / "calibration.png"
    args = ["--rotations", "0", "--parity", tmp_path / "parity.png", "--batch-size", 3]
    report = _json(mlip("eval", ensemble_checkpoint, emt_data, "--json", "--calibration", png, *args))
    calibration = report["calibration"]
    want = _oracle(ensemble_checkpoint, emt_data)
    for key, value in want.items():
        assert calibration[key] == pytest.approx(value, rel=1e-8), key
    assert calibration["members"] == 3 and calibration["structures"] == 10
    assert sum(calibration["curve"]["count"]) == 9 * 4 * 3 + 4 * 3  # free force components
    assert report["calibration_png"] == str(png)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(png).ndim == 3

    table = mlip("eval", ensemble_checkpoint, emt_data, *args)
    assert table.exit_code == 0, table.output
    assert "Spearman" in table.output and f"{want['spearman']:.3f}" in table.output
    default_png = ensemble_checkpoint.parent / "emt_calibration.png"  # next to the checkpoint, as the parity plot
    assert default_png.read_bytes()[:8] == PNG_MAGIC


def test_plain_models_have_no_calibration(emt_data, tmp_path):
    torch.manual_seed(0)
    plain = _save(build_model(tiny_config("tdn", lmax=1), dtype=torch.float64), tmp_path / "plain.pt")
    args = ["--rotations", "0", "--parity", tmp_path / "parity.png"]
    report = _json(mlip("eval", plain, emt_data, "--json", *args))
    assert "calibration" not in report and "calibration_png" not in report
    refused = mlip("eval", plain, emt_data, "--calibration", tmp_path / "c.png", *args)
    assert refused.exit_code == 2
    assert "--calibration needs an ensemble" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "c.png").exists()
