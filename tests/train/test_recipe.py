"""Recipes: strict keys with the allowed values named, overrides, durations, shipped recipes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from train_testlib import tiny_recipe

from mlip_cli.train.recipe import Recipe, RecipeError, apply_overrides, builtin_recipes_dir, load_recipe, parse_duration


@pytest.mark.parametrize(
    "text, seconds", [("20m", 1200), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), (600, 600), ("45", 45)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["20 minutes", "-5m", "0", "abc"])
def test_parse_duration_rejects(text):
    with pytest.raises(RecipeError):
        parse_duration(text)


def test_unknown_key_names_key_and_allowed_values(tmp_path):
    recipe = tiny_recipe(tmp_path / "x.extxyz", optim={"learning_rate": 1e-3})
    with pytest.raises(RecipeError, match=r"optim\.learning_rate.*allowed: lr, weight_decay"):
        Recipe.from_dict(recipe)
    recipe = tiny_recipe(tmp_path / "x.extxyz", model={"chanels": 8})
    with pytest.raises(RecipeError, match=r"model\.chanels.*allowed: family, elements"):
        Recipe.from_dict(recipe)
    with pytest.raises(RecipeError, match="unknown section 'optimiser'"):
        Recipe.from_dict({**tiny_recipe(tmp_path / "x.extxyz"), "optimiser": {}})


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("optim", "schedule", "linear", "cosine, plateau, constant"),
        ("run", "dtype", "float16", "float32 or float64"),
        ("data", "batch_size", 0, "positive integer"),
        ("data", "split", [0.5, 0.2], "summing to 1"),
        ("optim", "ema_decay", 1.5, r"\[0, 1\)"),
        ("loss", "symmetry_target", 0, "loss.symmetry_target must be a positive number"),
        ("loss", "symmetry_tolerance", "high", "loss.symmetry_tolerance must be a positive number"),
    ],
)
def test_bad_values_are_named(tmp_path, section, key, value, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict(tiny_recipe(tmp_path / "x.extxyz", **{section: {key: value}}))


def test_needs_a_stopping_rule(tmp_path):
    recipe = tiny_recipe(tmp_path / "x.extxyz")
    recipe["run"] = {"max_steps": None}
    with pytest.raises(RecipeError, match="max_steps, run.max_epochs, run.time_budget"):
        Recipe.from_dict(recipe)


def test_overrides_parse_yaml_values():
    data = {"model": {"family": "tdn"}}
    apply_overrides(data, ["optim.lr=1e-3", "model.elements=[1, 8]", "run.max_steps=5", "data.valid=null"])
    assert data["optim"]["lr"] == 1e-3 and data["model"]["elements"] == [1, 8]
    assert data["run"]["max_steps"] == 5 and data["data"]["valid"] is None
    with pytest.raises(RecipeError, match="section.key=value"):
        apply_overrides(data, ["lr0.1"])
    with pytest.raises(RecipeError, match="needs a section"):
        apply_overrides(data, ["lr=0.1"])


def test_relative_paths_resolve_against_the_recipe_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe("data/train.xyz")))
    assert load_recipe(path).data.train == str((tmp_path / "sub" / "data" / "train.xyz").resolve())


@pytest.mark.parametrize("name", ["tdn-tiny", "gaunt-tiny", "cg-tiny"])
def test_shipped_tiny_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.model["family"] == name.split("-")[0]
    assert recipe.data.generate is not None  # self-contained: no data path needed
    assert (builtin_recipes_dir() / f"{name}.yaml").is_file()


def test_cli_bad_key_is_one_line_and_exit_2(tmp_path, small_data):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(small_data, run={"max_stepz": 3})))
    proc = subprocess.run(
        [sys.executable, "-m", "mlip_cli", "train", str(path), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "run.max_stepz" in proc.stderr and "allowed: max_steps" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name",
    sorted(str(p.relative_to(builtin_recipes_dir()).with_suffix("")) for p in builtin_recipes_dir().rglob("*.yaml")),
)
def test_every_shipped_recipe_is_valid_with_its_data(name, tmp_path):
    from mlip_cli.train import RecipeSettings

    recipe = load_recipe(name, settings=RecipeSettings(train=tmp_path / "train.xyz"))
    assert recipe.name and recipe.model["family"]
