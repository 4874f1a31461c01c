"""Exact resume after SIGKILL, and 2-process data parallel training equal to one process."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_testlib import tiny_recipe, write_recipe

from mlip_cli.checkpoint import load_checkpoint

# Columns that depend on the wall clock, not on the numbers.
TIMING = {"elapsed_s", "structures_per_s", "data_s", "compute_s", "valid_s"}


def numbers(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def mlip(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlip_cli", *args], capture_output=True, text=True, **kwargs)


def torchrun_two(*args: str) -> subprocess.CompletedProcess:
    """``args`` (a script or ``-m module ...``) as two torchrun processes of one thread each."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, small_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 60, "valid_every": 6}))
    full = mlip("train", str(recipe), "--out", str(tmp_path / "full"), "--quiet")
    assert full.returncode == 0, full.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlip_cli", "train", str(recipe), "--out", str(run), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.3))  # a random moment after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_checkpoint(run / "last.pt")["train_state"]["step"]
    assert 0 < killed_at < 60

    resumed = mlip("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert numbers(run) == numbers(tmp_path / "full")
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "full" / "last.pt")
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key


def test_resume_needs_a_run_directory(tmp_path):
    result = mlip("train", "--resume", str(tmp_path))
    assert result.returncode == 2 and "not a run directory to resume" in result.stderr


def test_existing_run_is_not_overwritten(tmp_path, small_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 2, "valid_every": 2}))
    assert mlip("train", str(recipe), "--out", str(tmp_path / "run"), "--quiet").returncode == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    again = mlip("train", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    assert again.returncode == 2 and "--resume" in again.stderr
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
@pytest.mark.parametrize("members", [1, 3])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, small_data, members):
    # 24 training structures, global batch 4: every step is 4 structures in both runs (2 + 2 with torchrun);
    # an ensemble resamples its data by record (bootstrap), so each process weighs its share as one process would
    data = {"bootstrap": True} if members > 1 else {}
    recipe = tiny_recipe(
        small_data, run={"max_steps": 8, "valid_every": 4, "dtype": "float64"}, optim={"ema_decay": None}, data=data
    )
    recipe["model"]["ensemble"] = members
    recipe = write_recipe(tmp_path / "r.yaml", recipe)
    single = mlip("train", str(recipe), "--out", str(tmp_path / "one"), "--quiet")
    assert single.returncode == 0, single.stderr
    ddp = torchrun_two("-m", "mlip_cli", "train", str(recipe), "--out", str(tmp_path / "two"), "--quiet")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = numbers(tmp_path / "one"), numbers(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == ["4", "8"]
    for r1, r2 in zip(one, two):
        for key in ("train_loss", "valid_forces_rmse", "valid_energy_per_atom_rmse"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-9), key
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    for key in a["model_state"]:
        torch.testing.assert_close(a["model_state"][key], b["model_state"][key], rtol=1e-9, atol=1e-12)
    # one final report, from rank 0, whose numbers are the best validation logged, as with one process
    assert ddp.stdout.count("stopped by") == 1 and single.stdout.count("stopped by") == 1
    report_one = yaml.safe_load((tmp_path / "one" / "result.yaml").read_text())["valid"]
    report_two = yaml.safe_load((tmp_path / "two" / "result.yaml").read_text())["valid"]
    best = min(two, key=lambda r: float(r["valid_loss"]))
    assert report_two["forces_rmse"] == pytest.approx(float(best["valid_forces_rmse"]), rel=1e-9)
    for key, value in report_one.items():
        assert report_two[key] == pytest.approx(value, rel=1e-9), key


# A worker of a two-process group: sets up, builds the training optimizer (its first use imports torch._dynamo, and
# with it modules that keep `group.WORLD` as a default argument), all-reduces, shuts down, and counts gloo's threads.
GLOO_WORKER = """
import os
import torch
from mlip_cli.train.distributed import all_reduce_sum, setup_distributed, shutdown_distributed
from mlip_cli.train.recipe import OptimSection
from mlip_cli.train.trainer import build_optimizer

info = setup_distributed(torch.device("cpu"))
build_optimizer(torch.nn.Linear(3, 3).parameters(), OptimSection(), torch.device("cpu"))
assert all_reduce_sum(torch.ones(2), info).tolist() == [2.0, 2.0]
shutdown_distributed(info)
names = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
print("gloo threads left:", sum("gloo" in name for name in names))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads are listed through Linux's /proc")
def test_shutdown_frees_the_process_group_threads(tmp_path):
    # gloo threads that live on into the interpreter's exit can abort a finished run under load (torchrun then
    # reports it as failed): after shutdown_distributed none may be left
    worker = tmp_path / "worker.py"
    worker.write_text(GLOO_WORKER)
    run = torchrun_two(str(worker))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("gloo threads left: 0") == 2, run.stdout
