"""``mlip relax`` / ``mlip md`` refuse periodic structures whose cell is zero or flat, before any model call."""

from __future__ import annotations

import pytest
from ase import Atoms
from ase.io import write
from cli_runner import mlip

GOOD = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0]], cell=[3.6, 3.6, 3.6], pbc=True)

CELLS = {
    "zero volume": ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], True, "zero or non-finite cell vector"),
    "zero vector on a periodic axis": ([[3.6, 0, 0], [0, 0, 0], [0, 0, 3.6]], (True, True, False), "along xy"),
    "flat": ([[3.6, 0, 0], [0, 3.6, 0], [3.6, 3.6, 0]], True, "linearly dependent"),
}


def _bad(path, cell, pbc):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0.5]], cell=cell, pbc=pbc)
    write(path, [GOOD, atoms], format="extxyz")
    return path


def _one_error_line(result, text):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mlip: error: "), result.output
    assert text in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize("name", list(CELLS))
def test_relax_refuses_degenerate_periodic_cell(name, checkpoint, tmp_path):
    cell, pbc, text = CELLS[name]
    src = _bad(tmp_path / "bad.extxyz", cell, pbc)
    out = tmp_path / "out.extxyz"
    result = mlip("relax", src, "-m", checkpoint, "--out", out)
    _one_error_line(result, f"{src}: structure 1 is periodic")
    assert text in result.output
    assert not out.exists()
    # refused before the model is even loaded: a missing checkpoint is not what gets reported
    result = mlip("relax", src, "-m", tmp_path / "missing.pt", "--out", out)
    _one_error_line(result, f"{src}: structure 1 is periodic")


@pytest.mark.parametrize("name", list(CELLS))
def test_md_refuses_degenerate_periodic_cell(name, checkpoint, tmp_path):
    cell, pbc, text = CELLS[name]
    src = _bad(tmp_path / "bad.extxyz", cell, pbc)
    traj = tmp_path / "traj.extxyz"
    for model in (checkpoint, tmp_path / "missing.pt"):
        result = mlip("md", src, "-m", model, "--index", 1, "--steps", 2, "--traj", traj)
        _one_error_line(result, f"{src}: structure 1 is periodic")
        assert text in result.output
        result = mlip("md", src, "-m", model, "--index", -1, "--steps", 2, "--traj", traj)
        _one_error_line(result, f"{src}: structure 1 is periodic")
    assert not traj.exists()


def test_non_periodic_axes_may_have_zero_vectors(checkpoint, tmp_path):
    src = tmp_path / "wire.extxyz"
    write(src, Atoms("Cu2", positions=[[0, 0, 0], [1.8, 0.3, 0]], cell=[3.6, 0, 0], pbc=(True, False, False)))
    result = mlip("md", src, "-m", checkpoint, "--steps", 2)
    assert result.exit_code == 0, result.output
