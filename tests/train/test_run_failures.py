"""Runs that fail: a full disk (file-size limit) while checkpointing, a data error before the first step, and
labels that only the zero-weight loss terms would use. One line each, nothing half-written or left behind."""

from __future__ import annotations

import resource
import subprocess
import sys

import torch
from cli_runner import mlip
from train_testlib import tiny_recipe, write_recipe

from mlip_cli.checkpoint import load_checkpoint, save_checkpoint
from mlip_datasets.io import write_dataset
from mlip_datasets.record import Structure


def limited_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_training_into_a_full_disk_is_one_line(tmp_path, small_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 8, "valid_every": 4}))
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mlip_cli", "train", str(recipe), "--out", str(run), "--quiet"],
        capture_output=True,
        text=True,
        preexec_fn=limited_file_size(20_000),  # smaller than a checkpoint, larger than metrics.csv
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"mlip: error: {run}/last.pt: cannot write the checkpoint (File too large); nothing was written"]
    assert not list(run.glob("*.pt")) and not list(run.glob(".*.tmp"))


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model_state": {"w": torch.zeros(4)}, "model_config": None})
    before = path.read_bytes()
    script = (
        "import sys, torch\n"
        "from mlip_cli.checkpoint import CheckpointError, save_checkpoint\n"
        "try:\n"
        f"    save_checkpoint({str(path)!r}, {{'model_state': {{'w': torch.zeros(200_000)}}, 'model_config': None}})\n"
        "except CheckpointError as err:\n"
        "    print(err)\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=limited_file_size(len(before) * 4)
    )
    assert done.returncode == 3, done.stderr
    expected = f"{path}: cannot write the checkpoint (File too large); the previous checkpoint is kept"
    assert done.stdout.strip() == expected
    assert path.read_bytes() == before and load_checkpoint(path)["model_state"]["w"].shape == (4,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_data_error_before_the_first_step_leaves_no_run_directory(tmp_path, small_data):
    import numpy as np

    bad = tmp_path / "bad.extxyz"
    structures = [
        Structure(numbers=[29, 29], positions=[[0, 0, 0], [0, 0, 2.5]], energy=-1.0, forces=np.zeros((2, 3)))
        for _ in range(6)
    ]
    structures[4].positions[1, 2] = np.nan
    write_dataset(bad, structures)
    run = tmp_path / "run"
    result = mlip("train", write_recipe(tmp_path / "r.yaml", tiny_recipe(bad)), "--out", run, "-q")
    assert result.exit_code == 2 and "NaN" in result.output
    assert not run.exists()
    # the same --out then works
    good = mlip("train", write_recipe(tmp_path / "g.yaml", tiny_recipe(small_data)), "--out", run, "-q")
    assert good.exit_code == 0, good.output
    assert (run / "best.pt").is_file()


def test_labels_only_for_zero_weight_terms_name_the_missing_one(tmp_path):
    data = tmp_path / "energies_only.extxyz"
    write_dataset(
        data,
        [Structure(numbers=[29, 29], positions=[[0, 0, 0], [0, 0, 2.3 + 0.1 * k]], energy=-1.0 - k) for k in range(8)],
    )
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(data, loss={"energy": 0.0, "forces": 10.0}))
    result = mlip("train", recipe, "--out", tmp_path / "run", "-q")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "no forces label under the key 'forces', which loss.forces = 10 needs" in lines[0]
    assert not (tmp_path / "run").exists()
