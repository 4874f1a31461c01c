"""``mlip relax`` and ``mlip md`` through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import read, write
from ase_testlib import overlapping, periodic_bulk
from cli_runner import mlip

from mlip_datasets.generate import generate
from mlip_datasets.io import open_dataset, write_dataset


@pytest.fixture(scope="module")
def slabs(tmp_path_factory):
    """Two OC20-like slabs (fixed bottom layers) in extended XYZ, as ``mlip data generate`` writes them."""
    path = tmp_path_factory.mktemp("relax") / "slabs.extxyz"
    frames = list(generate("slab-adsorbate", 2, seed=0, frames_per_system=1, size=(2, 2, 3)))
    write_dataset(path, frames)
    return path


def test_relax_writes_converged_frames_with_fixed_atoms_in_place(slabs, trained_checkpoint, tmp_path):
    out = tmp_path / "relaxed.extxyz"
    result = mlip(
        "relax",
        slabs,
        "--model",
        trained_checkpoint,
        "--out",
        out,
        "--fmax",
        0.05,
        "--steps",
        3000,
        "--trajectory",
        tmp_path / "traj",
    )
    assert result.exit_code == 0, result.output
    assert "2 converged, 0 not converged, 0 failed" in result.output
    with open_dataset(slabs) as a, open_dataset(out) as b:
        assert len(b) == 2
        for i in range(2):
            before, after = a[i], b[i]
            assert before.fixed.any()
            assert np.array_equal(after.positions[before.fixed], before.positions[before.fixed])
            assert np.linalg.norm(after.forces[~before.fixed], axis=1).max() < 0.05
            assert after.info["relax_converged"]
    frames = read(tmp_path / "traj" / "000001.extxyz", ":")
    assert len(frames) > 2 and np.allclose(frames[-1].positions, read(out, 1).positions)


def test_relax_exit_code_and_json_when_out_of_steps(slabs, checkpoint, tmp_path):
    out = tmp_path / "o.extxyz"
    result = mlip("relax", slabs, "-m", checkpoint, "--out", out, "--steps", 2, "--optimizer", "lbfgs", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["not_converged"] == 2 and [r["steps"] for r in report["results"]] == [2, 2]
    assert [a.info["relax_converged"] for a in read(out, ":")] == [False, False]


def test_relax_skips_nan_structures_and_writes_nothing_garbage(checkpoint, tmp_path):
    good = periodic_bulk()
    src = tmp_path / "mixed.extxyz"
    write(src, [good, overlapping(), good])
    out = tmp_path / "mixed_relaxed.extxyz"
    result = mlip("relax", src, "-m", checkpoint, "--steps", 200, "--optimizer", "BFGS")
    assert result.exit_code == 1
    assert "structure 1 skipped: energy or forces became NaN/inf at step 0" in result.output
    frames = read(out, ":")
    assert len(frames) == 2
    for atoms in frames:
        assert np.isfinite(atoms.positions).all() and np.isfinite(atoms.get_forces()).all()
        assert np.isfinite(atoms.get_potential_energy())

    only_bad = tmp_path / "bad.extxyz"
    write(only_bad, overlapping())
    result = mlip("relax", only_bad, "-m", checkpoint)
    assert result.exit_code == 1 and "nothing written" in result.output
    assert not (tmp_path / "bad_relaxed.extxyz").exists()


def test_relax_cell_from_a_data_set_directory(trained_checkpoint, tmp_path):
    store = tmp_path / "bulk_store"
    write_dataset(store, [open_dataset_record(periodic_bulk())])
    out = tmp_path / "cell.extxyz"
    result = mlip(
        "relax",
        store,
        "-m",
        trained_checkpoint,
        "--relax-cell",
        "--optimizer",
        "FIRE",
        "--fmax",
        0.05,
        "--steps",
        400,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "ASE FIRE" in result.output
    relaxed = read(out)
    assert not np.allclose(relaxed.cell.array, periodic_bulk().cell.array, atol=1e-3)


def open_dataset_record(atoms):
    from mlip_datasets.record import Structure

    return Structure.from_atoms(atoms)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "GD"], "--optimizer must be one of FIRE, BFGS, LBFGS"),
        (["--fmax", "0"], "--fmax must be positive"),
    ],
)
def test_relax_usage_errors_are_one_line(slabs, checkpoint, args, message):
    result = mlip("relax", slabs, "-m", checkpoint, *args)
    assert result.exit_code == 2
    assert message in result.output


def test_relax_rejects_elements_the_model_lacks(checkpoint, tmp_path):
    from ase import Atoms

    src = tmp_path / "fe.xyz"
    write(src, Atoms("Fe2", positions=[[0, 0, 0], [0, 0, 2.0]]))
    result = mlip("relax", src, "-m", checkpoint)
    assert result.exit_code == 2 and "structure 0 has elements (Fe)" in result.output


def test_md_names_the_chosen_frame_when_the_model_lacks_its_elements(checkpoint, tmp_path):
    from ase import Atoms

    src = tmp_path / "mixed.extxyz"
    write(src, [Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]), Atoms("Fe2", positions=[[0, 0, 0], [0, 0, 2.0]])])
    for index in ("1", "-1"):
        result = mlip("md", src, "-m", checkpoint, "--index", index, "--steps", 1)
        assert result.exit_code == 2 and "structure 1 has elements (Fe)" in result.output, result.output


def test_md_nvt_and_npt_write_log_trajectory_and_report(checkpoint, tmp_path):
    src = tmp_path / "bulk.extxyz"
    write(src, periodic_bulk() * (2, 1, 1))
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.log"
    result = mlip(
        "md",
        src,
        "-m",
        checkpoint,
        "--ensemble",
        "nvt",
        "--steps",
        20,
        "--timestep",
        0.5,
        "--temperature",
        300,
        "--traj",
        traj,
        "--traj-interval",
        5,
        "--log",
        log,
        "--log-interval",
        5,
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["steps"] == 20 and report["natoms"] == 8 and report["steps_per_second"] > 0
    assert report["ns_per_day"] == pytest.approx(report["steps_per_second"] * 0.5 * 86400 / 1e6)
    assert len(read(traj, ":")) == 5  # steps 0, 5, 10, 15, 20
    assert len(log.read_text().splitlines()) == 1 + 5
    result = mlip("md", src, "-m", checkpoint, "--ensemble", "npt", "--steps", 5, "--out", tmp_path / "end.xyz")
    assert result.exit_code == 0, result.output
    assert "energy drift (eV/atom/ps), thermostatted" in result.output
    assert len(read(tmp_path / "end.xyz")) == 8


def test_md_usage_errors(checkpoint, tmp_path):
    from ase.build import molecule

    src = tmp_path / "h2o.xyz"
    write(src, molecule("H2O"))
    result = mlip("md", src, "-m", checkpoint, "--ensemble", "npt", "--steps", 2)
    assert result.exit_code == 2 and "NPT needs a structure periodic" in result.output
    result = mlip("md", src, "-m", checkpoint, "--ensemble", "nph")
    assert result.exit_code == 2 and "--ensemble must be one of" in result.output
