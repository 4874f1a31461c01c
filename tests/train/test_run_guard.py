"""A run directory belongs to one training run at a time, and ``--resume`` continues the run it finds: only the
keys in ``RESUMABLE_KEYS`` (time budget, limits, cadence, early stopping, ...) may change."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from train_testlib import tiny_recipe, write_recipe

from mlip_cli.errors import UsageError
from mlip_cli.train import plan_run, run_training
from mlip_cli.train.recipe import Recipe
from mlip_cli.train.run import LOCK_NAME, RESUMABLE_KEYS, lock_run_dir


def mlip(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlip_cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def snapshot(run_dir) -> dict:
    """Every file's bytes and mtime: what "left as it was" means."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_data):
    """A finished tiny tdn run (recipe file, run directory)."""
    base = tmp_path_factory.mktemp("guard")
    recipe = write_recipe(base / "r.yaml", tiny_recipe(small_data, run={"max_steps": 4, "valid_every": 2}))
    run_dir = base / "run"
    plan = plan_run(recipe, out=run_dir)
    run_training(plan.recipe, plan.run_dir)
    return recipe, run_dir


def test_a_held_run_directory_is_refused(finished_run):
    recipe, run_dir = finished_run
    before = snapshot(run_dir)
    with lock_run_dir(run_dir):
        held = snapshot(run_dir)
        for args in (["train", str(recipe), "--out", str(run_dir)], ["train", "--resume", str(run_dir)]):
            proc = mlip(*args, "--quiet")
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.strip().count("\n") == 0, proc.stderr
            assert "another mlip train is running" in proc.stderr and str(run_dir) in proc.stderr
            assert snapshot(run_dir) == held
    assert {k: v for k, v in snapshot(run_dir).items() if k != LOCK_NAME} == {
        k: v for k, v in before.items() if k != LOCK_NAME
    }


def test_a_fresh_run_into_a_held_directory_is_refused(tmp_path, small_data):
    """A run that has not written its first checkpoint yet holds its directory too."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with lock_run_dir(run_dir):
        proc = mlip("train", str(recipe), "--out", str(run_dir), "--quiet")
        assert proc.returncode == 2 and "another mlip train is running" in proc.stderr, proc.stderr
        assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME]
        with pytest.raises(UsageError, match="another mlip train is running"):
            run_training(Recipe.from_dict(tiny_recipe(small_data)), run_dir)  # the API guards too
        assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME]


def test_a_killed_run_leaves_no_stale_lock(tmp_path, small_data):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from mlip_cli.train.run import lock_run_dir
                with lock_run_dir({str(run_dir)!r}):
                    print("locked", flush=True)
                    time.sleep(600)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match="another mlip train is running"), lock_run_dir(run_dir):
            pass
    finally:
        holder.kill()
        holder.wait()
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 2, "valid_every": 2}))
    proc = mlip("train", str(recipe), "--out", str(run_dir), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "last.pt").is_file()


@pytest.mark.parametrize(
    ("overrides", "key", "change"),
    [
        (["model.family=gaunt"], "model.family", "(tdn -> gaunt)"),
        (["model.channels=8"], "model.channels", "(4 -> 8)"),
        (["run.dtype=float64"], "run.dtype", "(float32 -> float64)"),
        (["optim.lr=0.5"], "optim.lr", "(0.01 -> 0.5)"),
        (["run.seed=3"], "run.seed", "(0 -> 3)"),
        (["loss.forces=1.0"], "loss.forces", "(10.0 -> 1.0)"),
        (["model.radial_layers=3"], "model.radial_layers", "(unset -> 3)"),
    ],
)
def test_resume_refuses_a_different_run(finished_run, overrides, key, change):
    _, run_dir = finished_run
    args = [a for o in overrides for a in ("--set", o)]
    with pytest.raises(UsageError) as err:
        plan_run(resume=run_dir, overrides=overrides)
    assert f"--resume: {key} differs from the run's recipe {change}" in str(err.value)
    assert "run.time_budget" in str(err.value)
    if key == "model.family":  # and through the CLI: one line, exit 2, nothing touched
        before = snapshot(run_dir)
        proc = mlip("train", "--resume", str(run_dir), *args, "--quiet")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert f"{key} differs" in proc.stderr
        assert snapshot(run_dir) == before


def test_resume_refuses_other_training_data(finished_run, small_data, tmp_path):
    _, run_dir = finished_run
    other = tmp_path / "other.extxyz"
    other.write_bytes(small_data.read_bytes())
    from mlip_cli.train import RecipeSettings

    with pytest.raises(UsageError, match=r"--resume: data\.train differs"):
        plan_run(resume=run_dir, settings=RecipeSettings(train=other))
    plan_run(resume=run_dir, settings=RecipeSettings(train=small_data))  # the same data again is fine


def test_resume_may_change_the_limits_and_cadence(finished_run):
    recipe, run_dir = finished_run
    plan = plan_run(
        resume=run_dir,
        overrides=["run.max_steps=8", "run.valid_every=4", "run.log_every=1", "run.early_stopping=3"],
    )
    assert plan.resume and plan.recipe.run.max_steps == 8 and plan.recipe.run.early_stopping == 3
    assert {"run.time_budget", "run.max_steps", "run.max_epochs", "run.valid_every"} <= set(RESUMABLE_KEYS)
    proc = mlip("train", "--resume", str(run_dir), "--time-budget", "10m", "--set", "run.max_steps=6", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "6 steps" in proc.stdout
