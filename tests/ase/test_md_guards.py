"""MD guards: one free atom runs with finite everything; an exploding run stops at the physical-range limits
with one line naming the step, the quantity and the limit, keeping only the good frames before it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms, units
from ase.constraints import FixAtoms
from ase.io import read, write
from ase_testlib import periodic_bulk
from cli_runner import mlip

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.errors import UsageError
from mlip_cli.md import MAX_DISPLACEMENT_A, MDFailure, initialize_velocities, run_md

EXPLODING_DT_FS = 50.0  # the tiny untrained model's 4-atom Cu/Au cell: ~20 good steps, then it blows up


@pytest.fixture(scope="module")
def calc(checkpoint):
    return MLIPCalculator.from_checkpoint(checkpoint, dtype="float64", skin=0.5)


def assert_good_frames(frames, dt_fs, max_temperature, max_displacement=MAX_DISPLACEMENT_A):
    """Every frame finite, below the temperature limit, every atom moving less than the limit per step."""
    for frame in frames:
        p = frame.get_momenta()
        assert np.isfinite(frame.positions).all() and np.isfinite(p).all()
        assert np.isfinite(frame.get_forces()).all()
        assert frame.get_temperature() <= max_temperature
        speed = np.linalg.norm(p / frame.get_masses()[:, None], axis=1).max()
        assert speed * dt_fs * units.fs <= max_displacement


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_one_atom_through_run_md_is_finite(calc, tmp_path, ensemble):
    atoms = Atoms("Cu", positions=[[0.0, 0.0, 0.0]])
    atoms.calc = calc
    traj = tmp_path / "one.extxyz"
    report = run_md(atoms, ensemble, steps=5, temperature_K=300, init_velocities=True, trajectory=traj, traj_interval=1)
    frames = read(traj, ":")
    assert len(frames) == 6
    assert_good_frames(frames, 1.0, 5000.0)
    assert np.isfinite([report.energy_drift, report.mean_temperature, report.final_temperature]).all()
    assert np.abs(frames[0].get_forces()).max() < 1e-12  # nothing to interact with
    if ensemble == "nve":  # centre-of-mass motion removed: the atom is at rest and stays there
        assert report.final_temperature == 0.0 and not np.any(atoms.get_momenta())
        assert np.array_equal(atoms.positions, [[0.0, 0.0, 0.0]])


def test_initialize_velocities_keeps_the_drawn_temperature_for_many_atoms():
    atoms = periodic_bulk()
    initialize_velocities(atoms, 300.0, seed=0)
    p = atoms.get_momenta()
    assert np.abs(p.sum(axis=0)).max() < 1e-12  # zero total momentum
    assert 20 < atoms.get_temperature() < 1500 and np.isfinite(p).all()
    one = Atoms("Cu")
    initialize_velocities(one, 300.0, seed=0)
    assert not np.any(one.get_momenta())  # ASE's Stationary would make these NaN


def test_one_atom_through_the_cli(checkpoint, tmp_path):
    src, traj, out = tmp_path / "one.xyz", tmp_path / "one.extxyz", tmp_path / "end.xyz"
    write(src, Atoms("Cu", positions=[[1.0, 2.0, 3.0]]))
    result = mlip(
        "md", src, "-m", checkpoint, "--steps", 4, "--traj", traj, "--traj-interval", 1, "--out", out, "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["natoms"] == 1 and report["final_temperature"] == 0.0
    frames = read(traj, ":")
    assert len(frames) == 5
    assert_good_frames(frames, 1.0, 5000.0)
    assert np.allclose(read(out).positions, [[1.0, 2.0, 3.0]])


def test_nothing_to_move_is_refused(calc):
    atoms = periodic_bulk()
    atoms.set_constraint(FixAtoms(indices=range(len(atoms))))
    atoms.calc = calc
    with pytest.raises(UsageError, match="nothing can move: all 4 atoms are fixed"):
        run_md(atoms, steps=2)
    with pytest.raises(UsageError, match="no atoms"):
        run_md(Atoms(), steps=2)


def test_exploding_run_stops_at_the_displacement_limit(calc, tmp_path):
    atoms = periodic_bulk()
    atoms.calc = calc
    traj = tmp_path / "boom.extxyz"
    with pytest.raises(MDFailure, match=r"^step (\d+): an atom moves [\d.]+ A per step, above the limit 0.5 A") as err:
        run_md(atoms, "nve", steps=200, timestep_fs=EXPLODING_DT_FS, trajectory=traj, traj_interval=1)
    step = int(err.value.args[0].split(":")[0].split()[1])
    frames = read(traj, ":")
    assert 1 <= step == len(frames) < 200  # steps 0 .. step-1 kept, the bad one not written
    assert_good_frames(frames, EXPLODING_DT_FS, 5000.0)


def test_exploding_run_stops_at_the_temperature_limit(calc, tmp_path):
    atoms = periodic_bulk()
    atoms.calc = calc
    traj = tmp_path / "hot.traj"
    with pytest.raises(MDFailure, match=r"^step \d+: temperature [\d.e+]+ K is above the limit 5000 K"):
        run_md(atoms, "nve", steps=200, timestep_fs=EXPLODING_DT_FS, max_displacement=1e6, trajectory=traj)
    frames = read(traj, ":")
    assert len(frames) >= 1
    assert_good_frames(frames, EXPLODING_DT_FS, 5000.0, max_displacement=1e6)


def test_exploding_run_through_the_cli(checkpoint, tmp_path):
    src, traj, out = tmp_path / "bulk.extxyz", tmp_path / "boom.extxyz", tmp_path / "end.xyz"
    write(src, periodic_bulk())
    args = ["md", src, "-m", checkpoint, "--timestep", EXPLODING_DT_FS, "--steps", 200, "--traj", traj]
    result = mlip(*args, "--traj-interval", 1, "--out", out)
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if "stopped" in ln]
    assert line.startswith("mlip md: stopped: step ") and "above the limit 0.5 A" in line
    frames = read(traj, ":")
    assert len(frames) == int(line.split("step ")[1].split(":")[0])
    assert_good_frames(frames, EXPLODING_DT_FS, 5000.0)
    assert not out.exists()  # no final frame from a failed run

    result = mlip(*args, "--max-displacement", 1e6, "--max-temperature", 2000, "--traj-interval", 1, "--overwrite")
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if "stopped" in ln]
    assert "K is above the limit 2000 K" in line
    assert_good_frames(read(traj, ":"), EXPLODING_DT_FS, 2000.0, max_displacement=1e6)


def test_a_run_stopped_at_step_zero_leaves_no_trajectory(calc, tmp_path):
    atoms = periodic_bulk()
    atoms.calc = calc
    traj = tmp_path / "none.extxyz"
    with pytest.raises(MDFailure, match="^step 0: an atom moves"):
        run_md(atoms, steps=5, timestep_fs=1.0, max_displacement=1e-6, trajectory=traj)
    assert not traj.exists()


def test_non_positive_limits_are_usage_errors(checkpoint, tmp_path):
    src = tmp_path / "bulk.extxyz"
    write(src, periodic_bulk())
    result = mlip("md", src, "-m", checkpoint, "--steps", 2, "--max-displacement", 0)
    assert result.exit_code == 2 and "mlip: error: need positive limits" in result.output


def test_out_of_range_names_what_left_the_physical_range():
    """The checks ``run_md`` stops on, applied to a frame from any integrator (``bench_stability``'s TorchSim
    replicas): a quiet frame passes; each quantity pushed past its limit is named with its value and limit."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlip_cli.md import out_of_range

    dt = 0.5 * units.fs

    def frame(energy=-1.0, force=0.1, speed=0.0, position=0.0):
        atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, position]])
        atoms.set_velocities([[0, 0, 0], [speed, 0, 0]])
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=[[force, 0, 0], [-force, 0, 0]])
        return atoms

    limits = {"max_force": 1000.0, "max_temperature": 5000.0, "max_displacement": MAX_DISPLACEMENT_A}
    assert out_of_range(frame(), dt, **limits) is None
    assert "positions became NaN" in out_of_range(frame(position=np.nan), dt, **limits)
    assert out_of_range(frame(energy=np.inf), dt, **limits) == "the model's energy is NaN/inf"
    assert out_of_range(frame(force=np.nan), dt, **limits) == "the model's forces are NaN/inf"
    assert out_of_range(frame(force=2000.0), dt, **limits).startswith("max force 2000 eV/A is above the limit 1000")
    # 1.2 A per step at 0.5 fs: over the displacement limit, and hot enough for the temperature limit first
    fast = frame(speed=1.2 / dt)
    assert "temperature" in out_of_range(fast, dt, **limits)
    assert "A per step" in out_of_range(fast, dt, **{**limits, "max_temperature": 1e12})
