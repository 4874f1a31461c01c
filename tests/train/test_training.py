"""Training runs end to end: run directory, checkpoints, learning, NaN handling, stopping rules, eval."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from train_testlib import tiny_recipe

from mlip_cli.checkpoint import CHECKPOINT_SCHEMA, load_checkpoint, load_model
from mlip_cli.train import Recipe, TrainingError, run_training
from mlip_cli.train import trainer as trainer_module
from mlip_datasets.io import open_dataset
from mlip_datasets.stats import fit_e0s


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_directory_checkpoints_and_learning(tmp_path, small_data):
    recipe = Recipe.from_dict(tiny_recipe(small_data, run={"max_steps": 40, "valid_every": 8}))
    result = run_training(recipe, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "metrics.csv", "recipe.yaml", "learning_curve.png"):
        assert (run / name).is_file(), name
    rows = read_metrics(run)
    assert [int(r["step"]) for r in rows] == [8, 16, 24, 32, 40]
    assert result.steps == 40 and result.stop_reason == "max_steps"
    # it learns: the validation force error drops well below the first validation's
    first, best = float(rows[0]["valid_forces_rmse"]), min(float(r["valid_forces_rmse"]) for r in rows)
    assert best < 0.7 * first
    # data vs compute time is reported, and the training time is their sum (each column rounded to 1 ms)
    last = rows[-1]
    assert float(last["compute_s"]) > 0 and float(last["data_s"]) > 0
    assert abs(float(last["elapsed_s"]) - float(last["data_s"]) - float(last["compute_s"])) <= 0.0015

    ckpt = torch.load(run / "last.pt", weights_only=True)  # a checkpoint never needs code to load
    assert ckpt["kind"] == "mlip-checkpoint" and ckpt["schema"] == CHECKPOINT_SCHEMA == 3
    assert set(ckpt["train_state"]) >= {"optimizer", "schedule", "rng", "step", "epoch", "batch_in_epoch"}
    assert ckpt["ema_state"] is not None and ckpt["statistics"]["elements"] == ckpt["model_config"]["elements"]

    # E0s are the least-squares fit over the training split (independent recomputation)
    reader = open_dataset(small_data)
    from mlip_datasets.split import split_indices

    train_idx = split_indices(len(reader), [0.75, 0.25], 0)[0]
    elements = ckpt["model_config"]["elements"]
    comp = np.array([[np.sum(reader[i].numbers == z) for z in elements] for i in train_idx])
    energies = np.array([reader[i].energy for i in train_idx])
    expected = fit_e0s(comp, energies, elements)
    for z in elements:
        assert ckpt["model_config"]["e0s"].get(z, 0.0) == pytest.approx(expected[z], abs=1e-6)

    # best.pt holds the EMA weights that scored best; load_model gives that model
    model = load_model(run, dtype="float64")
    assert not model.training and model.dtype == torch.float64
    best_ckpt = load_checkpoint(run / "best.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, best_ckpt["ema_state"][name].double())


def test_nan_steps_are_skipped_then_abort_without_checkpoint(tmp_path, small_data, monkeypatch):
    real = trainer_module.weighted_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss, sse = real(*args, **kwargs)
        return (loss * float("nan"), sse) if calls["n"] in (3, 4) else (loss, sse)

    monkeypatch.setattr(trainer_module, "weighted_loss", sometimes_nan)
    messages = []
    result = run_training(Recipe.from_dict(tiny_recipe(small_data)), tmp_path / "ok", log=messages.append)
    assert result.steps == 12  # two skipped batches did not count as steps
    assert sum("NaN/inf; step skipped" in m for m in messages) == 2
    ckpt = load_checkpoint(tmp_path / "ok" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model_state"].values())

    monkeypatch.setattr(trainer_module, "weighted_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), {}))
    with pytest.raises(TrainingError, match="5 steps in a row had a NaN/inf loss"):
        run_training(Recipe.from_dict(tiny_recipe(small_data)), tmp_path / "nan")
    assert not (tmp_path / "nan" / "last.pt").exists() and not (tmp_path / "nan" / "best.pt").exists()


def test_time_budget_and_early_stopping(tmp_path, small_data):
    budget = Recipe.from_dict(tiny_recipe(small_data, run={"max_steps": None, "time_budget": "1s", "valid_every": 5}))
    result = run_training(budget, tmp_path / "budget")
    assert result.stop_reason == "time_budget" and result.timing["train_s"] >= 1.0

    # a learning rate too small to change float32 weights: no validation improves after the first
    frozen = Recipe.from_dict(
        tiny_recipe(
            small_data,
            optim={"lr": 1e-30, "warmup_steps": 0, "schedule": "constant", "ema_decay": None},
            run={"max_steps": 100, "valid_every": 2, "early_stopping": 2},
        )
    )
    result = run_training(frozen, tmp_path / "frozen")
    assert result.stop_reason == "early_stopping" and result.steps == 6


def test_float64_option(tmp_path, small_data):
    run_training(Recipe.from_dict(tiny_recipe(small_data, run={"dtype": "float64", "max_steps": 4})), tmp_path / "r")
    ckpt = load_checkpoint(tmp_path / "r" / "best.pt")
    assert ckpt["dtype"] == "float64"
    assert all(v.dtype == torch.float64 for v in ckpt["model_state"].values() if v.is_floating_point())


def test_eval_cli_matches_direct_computation(tmp_path, small_data):
    run_training(Recipe.from_dict(tiny_recipe(small_data)), tmp_path / "run")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlip_cli",
            "eval",
            str(tmp_path / "run"),
            str(small_data),
            "--json",
            "--dtype",
            "float64",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["structures"] == 32 and (tmp_path / "run" / "slabs_parity.png").is_file()

    # independent: the model on each structure, errors with numpy
    from mlip_datasets.graph import collate_graphs, structure_to_graph

    model = load_model(tmp_path / "run", dtype="float64")
    reader = open_dataset(small_data)
    f_err, free, e_err = [], [], []
    for s in reader:
        out = model(collate_graphs([structure_to_graph(s, model.cutoff, torch.float64)]))
        f_err.append(out["forces"].detach().numpy() - s.forces)
        free.append(~s.fixed)
        e_err.append((float(out["energy"]) - s.energy) / s.natoms)
    f_err, free, e_err = np.concatenate(f_err), np.concatenate(free), np.array(e_err)
    m = report["metrics"]
    # forces: the atoms free to move (the slabs' bottom layers are fixed), as fairchem scores; and all atoms
    assert m["forces_rmse"] == pytest.approx(1000 * np.sqrt(np.mean(f_err[free] ** 2)), rel=1e-9)
    assert m["forces_all_rmse"] == pytest.approx(1000 * np.sqrt(np.mean(f_err**2)), rel=1e-9)
    assert m["energy_per_atom_mae"] == pytest.approx(1000 * np.mean(np.abs(e_err)), rel=1e-9)
    assert set(report["per_element"]) == {str(z) for z in np.unique(np.concatenate([s.numbers for s in reader]))}
    # tdn is O(3)-equivariant to the CP fit error: far below the model's own errors
    for kind in ("rotation", "inversion"):
        assert report["equivariance"][kind]["energy_mev_per_atom"] < 1e-6
        assert report["equivariance"][kind]["force_rel"] < 1e-8
        assert report["equivariance"][kind]["force_angle_deg"] < 1e-5


def test_eval_rejects_a_file_that_is_not_a_checkpoint(tmp_path, small_data):
    bogus = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, bogus)
    proc = subprocess.run(
        [sys.executable, "-m", "mlip_cli", "eval", str(bogus), str(small_data)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "not an mlip checkpoint" in proc.stderr


def test_transip_trains_with_tuned_symmetry_weights(tmp_path, small_data):
    recipe = tiny_recipe(
        small_data,
        family="transip",
        run={"max_steps": 8, "valid_every": 4, "augment_rotations": True},
        loss={"symmetry": "auto"},
    )
    recipe["model"].update({"vector_channels": 2, "num_heads": 2})
    run_training(Recipe.from_dict(recipe), tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    for row in rows:
        for t in ("rotation", "inversion"):
            assert float(row[f"symmetry_violation/{t}"]) > 0
    # an untrained Transformer violates the symmetry above the target, so dual ascent raised the weights
    assert float(rows[-1]["symmetry_weight/rotation"]) > 1.0
    state = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["symmetry"]
    assert state["steps"] == 8 and state["weights"]["rotation"] == pytest.approx(
        float(rows[-1]["symmetry_weight/rotation"])
    )


def test_recipe_sets_the_automatic_symmetry_target_and_tolerance(tmp_path, small_data):
    recipe = tiny_recipe(
        small_data,
        family="transip",
        run={"max_steps": 2, "valid_every": 2},
        loss={"symmetry": "auto", "symmetry_target": 2e-4, "symmetry_tolerance": 0.2},
    )
    recipe["model"].update({"vector_channels": 2, "num_heads": 2})
    run_training(Recipe.from_dict(recipe), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["symmetry"]
    assert state["targets"] == {"rotation": 2e-4, "inversion": 2e-4} and state["gap_tolerance"] == 0.2


def test_fixed_symmetry_weight_stays(tmp_path, small_data):
    recipe = tiny_recipe(small_data, family="transip", run={"max_steps": 4, "valid_every": 4}, loss={"symmetry": 0.5})
    recipe["model"].update({"vector_channels": 2, "num_heads": 2})
    run_training(Recipe.from_dict(recipe), tmp_path / "run")
    assert float(read_metrics(tmp_path / "run")[-1]["symmetry_weight/rotation"]) == 0.5


def test_eval_frame_averaging_makes_transip_invariant(tmp_path, small_data):
    from typer.testing import CliRunner

    from mlip_cli.cli import app

    recipe = tiny_recipe(small_data, family="transip", run={"max_steps": 4, "valid_every": 4, "dtype": "float64"})
    recipe["model"].update({"vector_channels": 2, "num_heads": 2})
    run_training(Recipe.from_dict(recipe), tmp_path / "run")
    runner = CliRunner()

    def equivariance(flag: str) -> dict:
        result = runner.invoke(app, ["eval", str(tmp_path / "run"), str(small_data), "--limit", "8", "--json", flag])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout[result.stdout.index("{") :])["equivariance"]

    plain = equivariance("--no-frame-averaging")
    assert plain["rotation"]["energy_mev_per_atom"] > 1e-3 and plain["inversion"]["energy_mev_per_atom"] > 1e-3
    averaged = equivariance("--frame-averaging")
    for kind in ("rotation", "inversion"):
        assert averaged[kind]["energy_mev_per_atom"] < 1e-9 and averaged[kind]["force_rel"] < 1e-9

    run_training(Recipe.from_dict(tiny_recipe(small_data, run={"max_steps": 2, "valid_every": 2})), tmp_path / "tdn")
    result = runner.invoke(app, ["eval", str(tmp_path / "tdn"), str(small_data), "--frame-averaging"])
    assert result.exit_code == 2 and "applies to transip models" in result.output


def test_cli_data_options_take_paths_as_they_are(tmp_path, small_data, monkeypatch):
    """--data, --valid-data, --test-data and --time-budget set the recipe fields; nothing is parsed as YAML, so
    ' #' (a YAML comment) and ': ' (a YAML mapping) in a path are just characters."""
    import shutil

    import yaml
    from train_testlib import write_recipe
    from typer.testing import CliRunner

    from mlip_cli.cli import app
    from mlip_cli.evaluation import evaluate_model, open_graphs
    from mlip_datasets.io import write_dataset

    odd = tmp_path / "data #2: odd"
    odd.mkdir()
    shutil.copy(small_data, odd / "train #1: a.extxyz")
    structures = list(open_dataset(small_data))
    write_dataset(odd / "valid #1: b.extxyz", structures[:6])  # two different files: each score is its own
    write_dataset(odd / "test #1: c.extxyz", structures[-5:])
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_recipe(tmp_path / "absent.extxyz", run={"max_steps": 2, "valid_every": 2})
    )
    monkeypatch.chdir(tmp_path)  # --data is relative: against the working directory
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(recipe),
            "--data",
            "data #2: odd/train #1: a.extxyz",
            "--valid-data",
            str(odd / "valid #1: b.extxyz"),
            "--test-data",
            str(odd / "test #1: c.extxyz"),
            "--time-budget",
            "10m",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["data"]["train"] == str(odd / "train #1: a.extxyz")
    assert saved["data"]["valid"] == str(odd / "valid #1: b.extxyz")
    assert saved["data"]["test"] == str(odd / "test #1: c.extxyz")
    assert saved["run"]["time_budget"] == 600.0
    # the end-of-run scores are those of the best model on each file
    report = yaml.safe_load((tmp_path / "run" / "result.yaml").read_text())
    model = load_model(tmp_path / "run")
    for name, file in (("valid", "valid #1: b.extxyz"), ("test", "test #1: c.extxyz")):
        direct = evaluate_model(model, open_graphs(odd / file, model.cutoff, model.dtype), rotations=0).metrics
        assert report[name]["forces_rmse"] == pytest.approx(direct["forces_rmse"], rel=1e-5), name
        assert report[name]["energy_per_atom_mae"] == pytest.approx(direct["energy_per_atom_mae"], rel=1e-5), name


def _ascend_after(steps: int):
    """A ``weighted_loss`` that turns into gradient ascent after ``steps`` calls: a run that really diverges."""
    real = trainer_module.weighted_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value, sse = real(*args, **kwargs)
        return (-value if calls["n"] > steps else value), sse

    return loss


def test_a_diverging_run_warns_once_at_the_first_validation_far_above_the_best(tmp_path, small_data, monkeypatch):
    recipe = tiny_recipe(small_data, optim={"lr": 0.05, "warmup_steps": 2}, run={"max_steps": 40, "valid_every": 4})
    calm = []
    run_training(Recipe.from_dict(recipe), tmp_path / "calm", log=calm.append)
    assert not any("diverging" in m for m in calm)

    monkeypatch.setattr(trainer_module, "weighted_loss", _ascend_after(12))
    messages = []
    run_training(Recipe.from_dict(recipe), tmp_path / "run", log=messages.append)
    rows = read_metrics(tmp_path / "run")
    best, first_far = float("inf"), None  # the first validation 10x above the best before it, from metrics.csv
    for row in rows:
        loss = float(row["valid_loss"])
        if loss > 10 * best:
            first_far = first_far or (row["step"], loss / best)
        best = min(best, loss)
    warnings = [m for m in messages if "may be diverging" in m]
    assert first_far is not None, "gradient ascent should take the validation loss 10x above its best"
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: step {first_far[0]}: validation loss")
    assert f"is {first_far[1]:.0f}x its best" in warnings[0] and "lower optim.lr" in warnings[0]
