"""Training's data path: worker processes give the same run as none, packing by atoms and edges, resume inside
an epoch, a worker's data error as one line, and Ctrl-C reaching the workers too."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from train_testlib import tiny_recipe, write_recipe

from mlip_cli.checkpoint import load_checkpoint
from mlip_cli.train import data as data_module
from mlip_cli.train import plan_run, run_training
from mlip_cli.train.data import TrainBatches, fit_statistics, load_training_data, plan_loading
from mlip_cli.train.recipe import DataSection, Recipe, RecipeError
from mlip_datasets.io import open_dataset, write_dataset

TIMING = {"elapsed_s", "structures_per_s", "data_s", "compute_s", "valid_s"}


def numbers(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def weights(run_dir) -> dict:
    return load_checkpoint(run_dir / "last.pt")["model_state"]


def assert_same_run(a, b) -> None:
    assert numbers(a) == numbers(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_zero_and_two_workers_train_bit_identical_weights(tmp_path, small_data):
    # packing by atoms too (12-atom slabs: 3 per batch under 40 atoms), with rotation augmentation drawing from
    # the global random stream that a DataLoader could otherwise shift
    sections = {"data": {"batch_size": 6, "max_atoms": 40}, "run": {"max_steps": 10, "augment_rotations": True}}
    runs = {}
    for workers in (0, 2):
        recipe = tiny_recipe(small_data, **sections)
        recipe["data"]["num_workers"] = workers
        runs[workers] = tmp_path / f"w{workers}"
        run_training(Recipe.from_dict(recipe), runs[workers])
    assert_same_run(runs[0], runs[2])


def _training_set(tmp_path, small_data, **fields):
    section = DataSection(train=str(small_data), split=[0.75, 0.25], **fields)
    data = load_training_data(section, 4.0, torch.float64, tmp_path)
    return section, data, fit_statistics(data.train, None)


def test_packing_by_atoms_and_estimated_edges_covers_every_structure_once(tmp_path, small_data):
    section, data, stats = _training_set(tmp_path, small_data, max_atoms=30, max_edges=700)
    per_structure_edges = 12 * stats["avg_num_neighbors"]  # every slab has 12 atoms
    natoms = [s.natoms for s in open_dataset(small_data)]  # the data's own atom counts
    epochs = {}
    for workers in (0, 2):
        batches = TrainBatches(data.train, section, stats, max_structures=100, seed=3, num_workers=workers)
        epochs[workers] = [(k, b.index.tolist()) for k, b, _ in batches.epoch(2)]
        assert [k for k, _ in epochs[workers]] == list(range(batches.batches_per_epoch))
        tail = [(k, b.index.tolist()) for k, b, _ in batches.epoch(2, skip=3)]
        assert tail == epochs[workers][3:]  # resuming inside the epoch
    assert epochs[0] == epochs[2]
    records = [r for _, b in epochs[0] for r in b]
    assert sorted(records) == sorted(data.train.indices.tolist())  # each training record exactly once
    for _, b in epochs[0]:
        assert sum(natoms[r] for r in b) <= 30 and len(b) * per_structure_edges <= 700
    assert max(len(b) for _, b in epochs[0]) == 2  # 30 atoms: two 12-atom slabs


def test_workers_and_cache_are_planned_from_size_and_cores(tmp_path, small_data, monkeypatch):
    section, data, stats = _training_set(tmp_path, small_data)
    assert plan_loading(data, section, stats) == (0, True)  # 24 small slabs: in memory, no workers
    assert data.valid.caches
    monkeypatch.setattr(data_module, "_CACHE_BUDGET_BYTES", 0)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    workers, cached = plan_loading(data, section, stats)
    cores = len(os.sched_getaffinity(0))
    assert workers == min(4, cores // 2) and not cached and not data.train.caches and not data.valid.caches
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # one process per core: no core left for workers
    assert plan_loading(data, section, stats) == (0, False)
    section.num_workers, section.cache_graphs = 0, "yes"
    assert plan_loading(data, section, stats) == (0, True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_atoms": 0}, "data.max_atoms must be a positive integer"),
        ({"max_edges": 2.5}, "data.max_edges must be a positive integer"),
        ({"num_workers": -1}, "data.num_workers must be auto or an integer >= 0"),
        ({"num_workers": "many"}, "data.num_workers must be auto or an integer >= 0"),
        ({"num_workers": 2, "cache_graphs": "yes"}, "needs data.num_workers: 0"),
    ],
)
def test_bad_loader_fields(small_data, data, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict(tiny_recipe(small_data, data=data))


DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from mlip_cli.train import data, trainer

    at, sampled, sig = int(sys.argv[1]), int(sys.argv[2]), getattr(signal, sys.argv[3])
    if sampled:  # statistics read the first and last record only: the others are read in workers alone
        data._STATS_MAX_STRUCTURES = sampled
    step = trainer.Trainer._step

    def signalled_step(self, batch, window):
        if self.state.step + 1 == at:  # as Ctrl-C in a terminal or a batch scheduler: the whole process group
            os.killpg(os.getpgrp(), sig)
        return step(self, batch, window)

    trainer.Trainer._step = signalled_step
    from mlip_cli.cli import main

    sys.argv = ["mlip", *sys.argv[4:]]
    main()
    """
)


def driven(tmp_path, at: int, *args, sampled: int = 0, sig: str = "SIGINT") -> subprocess.CompletedProcess:
    """``mlip ARGS`` in a new process group (its own and its workers'), ``sig`` to the group before step ``at``;
    statistics from ``sampled`` structures where not 0."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(at), str(sampled), sig, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out, err = proc.communicate(timeout=300)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # no worker outlives the run
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a worker process outlived the training run")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_data_error_in_a_worker_is_one_line(tmp_path, small_data):
    from train_testlib import rattled_metal_slabs

    structures = rattled_metal_slabs(10, seed=2)
    structures[5].forces[3, 1] = np.nan
    data, valid = tmp_path / "nan.extxyz", tmp_path / "valid.extxyz"
    write_dataset(data, structures[:8])
    write_dataset(valid, structures[8:])
    recipe = tiny_recipe(data, data={"valid": str(valid), "num_workers": 1, "batch_size": 2})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    proc = driven(tmp_path, 1000, "train", str(path), "--out", str(tmp_path / "run"), "--quiet", sampled=2)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"mlip: error: {data}: record 5: forces has NaN or inf values; fix or drop this structure"
    ]


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_to_the_workers_too_saves_and_resumes_exactly(tmp_path, small_data, sig, code):
    # augmentation draws from the global random stream, which the resumed loader must not shift
    recipe = tiny_recipe(small_data, run={"max_steps": 16, "valid_every": 5, "augment_rotations": True})
    recipe["data"]["num_workers"] = 1
    path = write_recipe(tmp_path / "r.yaml", recipe)
    run = tmp_path / "run"
    stopped = driven(tmp_path, 3, "train", str(path), "--out", str(run), "--quiet", sig=sig)
    assert stopped.returncode == code, stopped.stderr
    assert stopped.stderr.strip().splitlines() == [
        f"mlip: {sig} at step 3: saved {run / 'last.pt'}; continue with: mlip train --resume {run}"
    ]
    assert load_checkpoint(run / "last.pt")["train_state"]["batch_in_epoch"] == 3  # inside the first epoch
    resumed = subprocess.run(
        [sys.executable, "-m", "mlip_cli", "train", "--resume", str(run), "--quiet"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    recipe["data"]["num_workers"] = 0
    plan = plan_run(write_recipe(tmp_path / "r0.yaml", recipe), out=tmp_path / "full")
    run_training(plan.recipe, plan.run_dir)
    assert_same_run(run, tmp_path / "full")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_with_workers_match_one_without(tmp_path, small_data):
    recipe = tiny_recipe(
        small_data, run={"max_steps": 8, "valid_every": 4, "dtype": "float64"}, optim={"ema_decay": None}
    )
    recipe["data"]["num_workers"] = 0
    run_training(Recipe.from_dict(recipe), tmp_path / "one")
    recipe["data"]["num_workers"] = 1
    path = write_recipe(tmp_path / "r.yaml", recipe)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(
        [*torchrun, "-m", "mlip_cli", "train", str(path), "--out", str(tmp_path / "two"), "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one, both = numbers(tmp_path / "one"), numbers(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in both] == ["4", "8"]
    for r1, r2 in zip(one, both):
        for key in ("train_loss", "valid_forces_rmse", "valid_energy_per_atom_rmse"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-9), key
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-12)
