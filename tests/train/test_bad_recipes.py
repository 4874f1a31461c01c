"""Bad recipe values and bad training data: one ``mlip: error:`` line naming the key (or file and record), exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_testlib import tiny_recipe, write_recipe

from mlip_datasets.io import open_dataset, write_dataset
from mlip_datasets.record import Structure

# what ``mlip train`` writes before it reads the data; a data error may leave these (never a checkpoint)
_BEFORE_DATA = {"recipe.yaml", "run.lock"}


def _slabs(small_data: Path, n: int) -> list[Structure]:
    """The first ``n`` labelled slabs of the session's small data set, as structures to edit."""
    reader = open_dataset(small_data)
    return [reader[i] for i in range(n)]


def _train(tmp_path: Path, recipe: dict, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mlip_cli", "train", str(path), "--out", str(run_dir), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return proc, run_dir


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlip: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "sections, needle",
    [
        ({"optim": {"lr": float("nan")}}, "optim.lr must be a positive number, got nan"),
        ({"optim": {"lr": float("inf")}}, "optim.lr must be a positive number, got inf"),
        ({"optim": {"lr": -0.01}}, "optim.lr must be a positive number, got -0.01"),
        ({"optim": {"weight_decay": float("nan")}}, "optim.weight_decay"),
        ({"optim": {"clip_norm": float("nan")}}, "optim.clip_norm"),
        ({"model": {"cutoff": 0}}, "cutoff must be positive"),
        ({"model": {"cutoff": float("nan")}}, "cutoff must be positive and finite, got nan"),
        ({"model": {"cutoff": float("inf")}}, "cutoff must be positive and finite, got inf"),
        ({"loss": {"energy": 0, "forces": 0, "stress": 0}}, "loss.energy, loss.forces and loss.stress are all 0"),
        ({"loss": {"forces": float("nan")}}, "loss.forces must be a number >= 0, got nan"),
        ({"run": {"max_steps": float("inf")}}, "run.max_steps must be a positive integer"),
    ],
)
def test_bad_recipe_value_is_one_line_and_nothing_is_written(tmp_path, small_data, sections, needle):
    proc, run_dir = _train(tmp_path, tiny_recipe(small_data, **sections))
    line = _one_error_line(proc)
    assert needle in line, line
    assert not run_dir.exists()


@pytest.mark.parametrize("value", [".nan", ".inf", "-1e-3"])
def test_bad_lr_from_set_override(tmp_path, small_data, value):
    proc, run_dir = _train(tmp_path, tiny_recipe(small_data), "--set", f"optim.lr={value}")
    assert "optim.lr must be a positive number" in _one_error_line(proc)
    assert not run_dir.exists()


def _assert_nothing_trained(run_dir: Path) -> None:
    """A data error is found after the run directory is made: only what precedes reading data may be there."""
    if run_dir.exists():
        assert set(os.listdir(run_dir)) <= _BEFORE_DATA, os.listdir(run_dir)


def test_data_without_labels(tmp_path, small_data):
    unlabelled = [
        Structure(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc, sid=i, fid=0)
        for i, s in enumerate(_slabs(small_data, 8))
    ]
    data = tmp_path / "unlabelled.extxyz"
    write_dataset(data, unlabelled)
    proc, run_dir = _train(tmp_path, tiny_recipe(data))
    line = _one_error_line(proc)
    assert str(data) in line and "no energy, forces or stress labels" in line, line
    _assert_nothing_trained(run_dir)


@pytest.mark.parametrize("label", ["positions", "forces"])
def test_non_finite_training_structure_names_file_and_record(tmp_path, small_data, label):
    structures = _slabs(small_data, 10)
    valid_structures, structures = structures[8:], structures[:8]
    bad = getattr(structures[5], label).copy()
    bad[2, 0] = np.nan
    setattr(structures[5], label, bad)
    data, valid = tmp_path / "nan.extxyz", tmp_path / "valid.extxyz"
    write_dataset(data, structures)
    write_dataset(valid, valid_structures)
    # every record of ``data`` is a training record (the validation set is its own file)
    proc, run_dir = _train(tmp_path, tiny_recipe(data, data={"valid": str(valid)}))
    line = _one_error_line(proc)
    assert f"{data}: record 5: {label} has NaN or inf values" in line, line
    _assert_nothing_trained(run_dir)
