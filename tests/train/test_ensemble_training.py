"""Ensembles in training: members train as they would alone, differ, resume exactly, bootstrap their data."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from train_testlib import tiny_recipe

from mlip_cli.checkpoint import load_checkpoint, load_model
from mlip_cli.models import EnsemblePotential, build_model
from mlip_cli.train import Recipe, RecipeError, run_training
from mlip_cli.train import trainer as trainer_module
from mlip_cli.train.loss import bootstrap_weights


def _train(tmp_path, data_path, name, model=None, **sections):
    recipe = tiny_recipe(data_path, **sections)
    recipe["model"].update(model or {})
    recipe["run"]["dtype"] = "float64"
    run_training(Recipe.from_dict(recipe), tmp_path / name)
    return load_checkpoint(tmp_path / name / "last.pt")


def _member_state(state: dict, k: int) -> dict:
    prefix = f"members.{k}."
    return {key.removeprefix(prefix): v for key, v in state.items() if key.startswith(prefix)}


def test_each_member_trains_exactly_as_it_would_alone(tmp_path, small_data):
    """Member 0 of a 3-member ensemble starts from the weights a plain model of the same seed gets and takes the
    same steps (its own loss, clipping, Adam state and EMA): its weights equal the plain run's bit for bit."""
    plain = _train(tmp_path, small_data, "plain")
    ensemble = _train(tmp_path, small_data, "ensemble", model={"ensemble": 3})
    member0 = _member_state(ensemble["model_state"], 0)
    assert member0.keys() == plain["model_state"].keys()
    for key, value in plain["model_state"].items():
        assert torch.equal(member0[key], value), key
    ema0 = _member_state(ensemble["ema_state"], 0)
    assert all(torch.equal(ema0[k], v) for k, v in plain["ema_state"].items())
    # the other members started elsewhere (random weight matrices) and ended elsewhere
    member1 = _member_state(ensemble["model_state"], 1)
    weights = [k for k in member0 if k.endswith(".weight")]
    assert weights and all(not torch.equal(member0[k], member1[k]) for k in weights)


def test_trained_ensemble_loads_predicts_the_mean_and_members_disagree(tmp_path, small_data):
    _train(tmp_path, small_data, "run", model={"ensemble": 3}, run={"max_steps": 16, "valid_every": 8})
    model = load_model(tmp_path / "run")
    assert isinstance(model, EnsemblePotential) and model.num_members == 3
    from mlip_datasets.graph import collate_graphs, structure_to_graph
    from mlip_datasets.io import open_dataset

    reader = open_dataset(small_data)
    batch = collate_graphs([structure_to_graph(reader[i], model.cutoff, torch.float64) for i in range(4)])
    out = model(batch)
    singles = [model.member(k)(batch) for k in range(3)]  # standalone copies, an independent path
    for key in ("energy", "forces"):
        stacked = torch.stack([s[key] for s in singles])
        torch.testing.assert_close(out[key], stacked.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(out[f"{key}_std"], stacked.std(0, correction=0), rtol=0, atol=1e-12)
    assert float(out["forces_uncertainty"].min()) > 1e-6  # trained members disagree everywhere
    assert all(model.member(k).config.ensemble == 1 for k in range(3))


def test_ensemble_resume_is_exact(tmp_path, small_data, monkeypatch):
    """Interrupted at step 7 (SIGINT to this process mid-step), resumed: the weights of an uninterrupted run."""
    straight = _train(tmp_path, small_data, "straight", model={"ensemble": 2}, run={"max_steps": 12})
    step = trainer_module.Trainer._step

    def signalled_step(self, batch, window):
        if self.state.step + 1 == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, window)

    monkeypatch.setattr(trainer_module.Trainer, "_step", signalled_step)
    with pytest.raises(trainer_module.TrainingInterrupted):
        _train(tmp_path, small_data, "resumed", model={"ensemble": 2}, run={"max_steps": 12})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["train_state"]["step"] == 7
    recipe = tiny_recipe(small_data, run={"max_steps": 12})
    recipe["model"]["ensemble"] = 2
    recipe["run"]["dtype"] = "float64"
    run_training(Recipe.from_dict(recipe), tmp_path / "resumed", resume=True)
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key, value in straight["model_state"].items():
        assert torch.equal(resumed["model_state"][key], value), key


def test_bootstrap_members_weigh_their_own_resample(tmp_path, small_data):
    plain = _train(tmp_path, small_data, "plain", model={"ensemble": 2})
    boot = _train(tmp_path, small_data, "boot", model={"ensemble": 2}, data={"bootstrap": True})
    # the same initial weights (same seed), different data weights: every member ends elsewhere
    for k in range(2):
        a, b = _member_state(plain["model_state"], k), _member_state(boot["model_state"], k)
        assert any(not torch.equal(a[key], b[key]) for key in a if a[key].is_floating_point())
    assert boot["recipe"]["data"]["bootstrap"] is True


def test_bootstrap_weights_are_poisson_one_and_fixed_per_structure():
    index = torch.arange(100_000)
    w = bootstrap_weights(index, member=2, seed=7)
    assert abs(float(w.mean()) - 1.0) < 0.02 and abs(float(w.var()) - 1.0) < 0.03
    assert abs(float((w == 0).double().mean()) - math.exp(-1)) < 0.01  # a third of the data left out
    # a function of (seed, member, record) only: any batch order or subset gives the same weights
    perm = torch.randperm(100_000, generator=torch.Generator().manual_seed(0))[:500]
    assert torch.equal(bootstrap_weights(index[perm], 2, 7), w[perm])
    other = bootstrap_weights(index, member=3, seed=7)
    assert float((other == w).double().mean()) < 0.5  # members resample independently


def test_recipe_checks_the_ensemble_options(tmp_path, small_data):
    with pytest.raises(RecipeError, match="bootstrap"):
        Recipe.from_dict(tiny_recipe(small_data, data={"bootstrap": True}))
    with pytest.raises(Exception, match="ensemble must be 1"):
        build_model({"family": "tdn", "elements": [1], "ensemble": 0})
