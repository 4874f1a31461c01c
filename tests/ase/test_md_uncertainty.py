"""``mlip md`` with an ensemble model: the log's force-uncertainty column is what the members, run one by one
as plain models, give; ``--max-uncertainty`` ends the run at the first step above it and keeps that frame with
its uncertainty; a plain model has no column and refuses the option in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.io import read, write
from ase_testlib import periodic_bulk, tiny_config, write_checkpoint
from cli_runner import mlip

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.checkpoint import load_model
from mlip_cli.errors import UsageError
from mlip_cli.md import run_md
from mlip_cli.models import build_model

MEMBERS = 3


@pytest.fixture(scope="module")
def ensemble_checkpoint(tmp_path_factory):
    """An untrained float64 tdn ensemble of 3 members (tiny), saved as the trainer saves checkpoints."""
    torch.manual_seed(0)
    model = build_model({**tiny_config("tdn", lmax=1, avg_num_neighbors=10.0), "ensemble": MEMBERS}, torch.float64)
    model.set_statistics(e0s={1: -1.0, 8: -2.0, 29: -3.0})
    return write_checkpoint(tmp_path_factory.mktemp("ensemble") / "ensemble.pt", model.eval())


@pytest.fixture(scope="module")
def member_calculators(ensemble_checkpoint):
    ensemble = load_model(ensemble_checkpoint, dtype="float64")
    return [MLIPCalculator(ensemble.member(k)) for k in range(MEMBERS)]


def members_uncertainty(frame, calculators) -> np.ndarray:
    """Per-atom ``sqrt(mean_k |F_k - F_mean|^2)`` from the members run one after another as plain models."""
    forces = []
    for calc in calculators:
        atoms = frame.copy()
        atoms.calc = calc
        forces.append(atoms.get_forces())
    forces = np.array(forces)
    return np.sqrt(((forces - forces.mean(0)) ** 2).sum(-1).mean(0))


@pytest.fixture()
def bulk_file(tmp_path):
    path = tmp_path / "bulk.extxyz"
    write(path, periodic_bulk())
    return path


def run_args(src, checkpoint, tmp_path, steps=20):
    return ["md", src, "-m", checkpoint, "--ensemble", "nvt", "--steps", steps, "--seed", 3, "--json"] + [
        "--traj",
        tmp_path / "md.extxyz",
        "--traj-interval",
        1,
        "--log",
        tmp_path / "md.log",
        "--log-interval",
        1,
    ]


def json_report(result) -> dict:
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_log_has_the_members_max_force_uncertainty(bulk_file, ensemble_checkpoint, member_calculators, tmp_path):
    result = mlip(*run_args(bulk_file, ensemble_checkpoint, tmp_path))
    assert result.exit_code == 0, result.output
    header = (tmp_path / "md.log").read_text().splitlines()[0].split()
    assert header[-1] == "MaxFUnc[eV/A]" and len(header) == 6
    logged = np.loadtxt(tmp_path / "md.log", skiprows=1)
    frames = read(tmp_path / "md.extxyz", ":")
    assert logged.shape == (21, 6) and len(frames) == 21
    expected = [members_uncertainty(f, member_calculators).max() for f in frames]
    assert np.allclose(logged[:, -1], expected, atol=1e-5)  # the log has 5 decimals
    assert np.ptp(expected) > 1e-3  # it changes along the run: a stale value would not match
    report = json_report(result)
    assert report["max_force_uncertainty"] == pytest.approx(max(expected), abs=1e-6)  # extxyz: 8 decimals
    assert report["stop_reason"] is None and report["steps"] == 20


@pytest.mark.parametrize("where", ["first step", "mid run"])
def test_max_uncertainty_stops_and_keeps_the_crossing_frame(
    bulk_file, ensemble_checkpoint, member_calculators, tmp_path, where
):
    free = tmp_path / "free"
    free.mkdir()
    assert mlip(*run_args(bulk_file, ensemble_checkpoint, free)).exit_code == 0
    series = np.loadtxt(free / "md.log", skiprows=1)[:, -1]  # the same run (same seed) without a threshold
    if where == "first step":
        threshold = 0.5 * series[0]
    else:  # between the largest of the first half and a later, larger value
        threshold = series[:10].max() + 0.5 * (series.max() - series[:10].max())
        assert series.max() > series[:10].max()
    expected_step = int(np.flatnonzero(series > threshold)[0])
    result = mlip(*run_args(bulk_file, ensemble_checkpoint, tmp_path), "--max-uncertainty", threshold)
    assert result.exit_code == 0, result.output  # asked for: a normal end
    report = json_report(result)
    assert report["steps"] == expected_step and report["stop_reason"].startswith(f"step {expected_step} (")
    (line,) = [ln for ln in result.stderr.splitlines() if "mlip md:" in ln]
    assert line.startswith(f"mlip md: stopped at step {expected_step} (") and "max force uncertainty" in line
    frames = read(tmp_path / "md.extxyz", ":")
    assert len(frames) == expected_step + 1  # every step up to and including the crossing one
    (kept,) = read(tmp_path / "md.uncertain.extxyz", ":")  # default: next to the trajectory
    assert np.allclose(kept.positions, frames[-1].positions, atol=1e-8)
    oracle = members_uncertainty(frames[-1], member_calculators)
    assert np.allclose(kept.arrays["forces_uncertainty"], oracle, atol=1e-6)
    assert kept.info["step"] == expected_step and kept.info["max_forces_uncertainty"] == pytest.approx(
        oracle.max(), abs=1e-6
    )
    assert oracle.max() > threshold and np.isfinite(kept.get_forces()).all()


def test_uncertain_frames_path_is_taken_and_never_replaced_silently(bulk_file, ensemble_checkpoint, tmp_path):
    out = tmp_path / "picked.extxyz"
    args = ["md", bulk_file, "-m", ensemble_checkpoint, "--steps", 3, "--max-uncertainty", 1e-6]
    result = mlip(*args, "--uncertain-frames", out)
    assert result.exit_code == 0, result.output
    assert read(out).info["step"] == 0
    result = mlip(*args, "--uncertain-frames", out)
    assert result.exit_code == 2 and "mlip: error:" in result.output and "--overwrite" in result.output


def test_plain_model_has_no_column_and_refuses_a_threshold(bulk_file, checkpoint, tmp_path):
    result = mlip(*run_args(bulk_file, checkpoint, tmp_path, steps=3))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "md.log").read_text().splitlines()[0].split()[-1] == "T[K]"
    assert json_report(result)["max_force_uncertainty"] is None

    bare = tmp_path / "bare"
    bare.mkdir()
    result = mlip(*run_args(bulk_file, checkpoint, bare, steps=3), "--max-uncertainty", 0.1)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("mlip: error: ") and "ensemble" in line
    assert not any(bare.iterdir())  # nothing written
    result = mlip("md", bulk_file, "-m", checkpoint, "--steps", 3, "--uncertain-frames", tmp_path / "u.extxyz")
    assert result.exit_code == 2 and "--uncertain-frames needs --max-uncertainty" in result.output


def test_run_md_refuses_a_threshold_without_uncertainty(checkpoint, tmp_path):
    atoms = periodic_bulk()
    atoms.calc = MLIPCalculator.from_checkpoint(checkpoint)
    with pytest.raises(UsageError, match="needs an ensemble model"):
        run_md(atoms, steps=2, max_uncertainty=0.1, uncertain_frames=tmp_path / "u.extxyz", trajectory=tmp_path / "t")
    assert not any(tmp_path.iterdir())
