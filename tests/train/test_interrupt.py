"""SIGINT/SIGTERM during `mlip train`: finish the step, write last.pt at it, one line, exit 128 + signal; resume.

The signal is made deterministic by a small driver that wraps ``Trainer._step`` and sends the real signal to its
own process just before the step that should be the last one: the step must still complete.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from train_testlib import tiny_recipe, write_recipe

from mlip_cli.checkpoint import load_checkpoint
from mlip_cli.train import plan_run, run_training

TIMING = {"elapsed_s", "structures_per_s", "data_s", "compute_s", "valid_s"}

DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from mlip_cli.train import trainer

    at, signals = int(sys.argv[1]), [getattr(signal, name) for name in sys.argv[2].split(",")]
    chosen = os.environ.get("SIGNAL_RANK") in (None, os.environ.get("RANK"))  # under torchrun: only that rank
    step = trainer.Trainer._step

    def signalled_step(self, batch, window):
        if self.state.step + 1 == at and chosen:  # signal arrives mid-step (before its forward pass)
            for sig in signals:
                os.kill(os.getpid(), sig)
        return step(self, batch, window)

    trainer.Trainer._step = signalled_step
    from mlip_cli.cli import main

    sys.argv = ["mlip", *sys.argv[3:]]
    main()
    """
)


def numbers(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def driven(tmp_path, at: int, signals: str, *args) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run(
        [sys.executable, str(driver), str(at), signals, *args], capture_output=True, text=True, timeout=120
    )


def test_sigint_saves_the_step_and_resume_matches_uninterrupted(tmp_path, small_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 16, "valid_every": 5}))
    run = tmp_path / "run"
    stopped = driven(tmp_path, 7, "SIGINT", "train", str(recipe), "--out", str(run), "--quiet")
    assert stopped.returncode == 130, stopped.stderr
    lines = [line for line in stopped.stderr.splitlines() if line.strip()]
    assert lines == [f"mlip: SIGINT at step 7: saved {run / 'last.pt'}; continue with: mlip train --resume {run}"]
    assert load_checkpoint(run / "last.pt")["train_state"]["step"] == 7  # the signalled step finished; valid at 5
    assert [r["step"] for r in numbers(run)] == ["5"]
    assert not (run / "result.yaml").exists() and not list(run.glob(".last.pt.*"))

    resumed = subprocess.run(
        [sys.executable, "-m", "mlip_cli", "train", "--resume", str(run), "--quiet"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr

    # the uninterrupted reference runs in this process, which also checks that the handlers are given back
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    sigint = signal.getsignal(signal.SIGINT)  # whatever this (pytest worker) process had: it must come back
    try:
        plan = plan_run(recipe, out=tmp_path / "full")
        assert run_training(plan.recipe, plan.run_dir).steps == 16
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert numbers(run) == numbers(tmp_path / "full")  # rows at 5, 10, 15, 16: the loss window was saved too
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "full" / "last.pt")
    assert a["train_state"]["step"] == 16
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key


def test_sigterm_exits_143_after_saving(tmp_path, small_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 16, "valid_every": 5}))
    run = tmp_path / "run"
    stopped = driven(tmp_path, 3, "SIGTERM", "train", str(recipe), "--out", str(run))  # not quiet: same one line
    assert stopped.returncode == 143, stopped.stderr
    assert f"mlip: SIGTERM at step 3: saved {run / 'last.pt'}" in stopped.stderr
    assert load_checkpoint(run / "last.pt")["train_state"]["step"] == 3  # before the first validation


def test_second_signal_aborts_at_once(tmp_path, small_data):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 16, "valid_every": 5}))
    run = tmp_path / "run"
    aborted = driven(tmp_path, 7, "SIGINT,SIGINT", "train", str(recipe), "--out", str(run), "--quiet")
    assert aborted.returncode == -signal.SIGINT  # killed by the default handler, no step finished, nothing written
    assert load_checkpoint(run / "last.pt")["train_state"]["step"] == 5
    assert not list(run.glob(".last.pt.*"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_a_signal_to_one_torchrun_process_stops_all_at_one_step(tmp_path, small_data):
    """Rank 1 alone is signalled: both processes stop after the same step, rank 0 writes last.pt and says so
    once; resumed under torchrun, the run ends with the numbers of an uninterrupted single-process run."""
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_recipe(small_data, run={"max_steps": 12, "valid_every": 4, "dtype": "float64"}, optim={"ema_decay": None}),
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = tmp_path / "two"
    stopped = subprocess.run(
        [*torchrun, str(driver), "6", "SIGINT", "train", str(recipe), "--out", str(run), "--quiet"],
        capture_output=True,
        text=True,
        env={**env, "SIGNAL_RANK": "1"},
        timeout=300,
    )
    assert stopped.returncode != 0
    # rank 0 saw no signal of its own: it reports the stop as a SIGTERM, once; rank 1 says nothing
    assert stopped.stderr.count("mlip: ") == 1
    assert (
        f"mlip: SIGTERM at step 6: saved {run / 'last.pt'}; continue with: mlip train --resume {run}" in stopped.stderr
    )
    assert load_checkpoint(run / "last.pt")["train_state"]["step"] == 6
    resumed = subprocess.run(
        [*torchrun, "-m", "mlip_cli", "train", "--resume", str(run), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "mlip_cli", "train", str(recipe), "--out", str(tmp_path / "one"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert single.returncode == 0, single.stderr
    one, two = numbers(tmp_path / "one"), numbers(run)
    assert [r["step"] for r in one] == [r["step"] for r in two] == ["4", "8", "12"]
    for r1, r2 in zip(one, two):
        for key in ("train_loss", "valid_forces_rmse", "valid_energy_per_atom_rmse"):
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-9), key
