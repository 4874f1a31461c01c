"""The energy kind of the training labels travels into the checkpoint; `mlip eval` refuses labels of another kind,
and IS2RE-style labels (energies of another geometry) are not trained on as if they were at their positions."""

from __future__ import annotations

import json

import torch
import yaml
from cli_runner import mlip
from train_testlib import rattled_metal_slabs, tiny_recipe, write_recipe

from mlip_datasets.io import write_dataset


def write_kind(path, n: int, seed: int, **info) -> None:
    structures = rattled_metal_slabs(n, seed)
    for s in structures:
        s.info.update(info)
    write_dataset(path, structures)


def test_the_energy_kind_is_kept_and_checked_by_eval(tmp_path):
    write_kind(tmp_path / "ads.extxyz", 16, 1, energy_kind="adsorption")
    write_kind(tmp_path / "total.extxyz", 4, 2, energy_kind="total")
    write_kind(tmp_path / "ads_test.extxyz", 4, 3, energy_kind="adsorption")
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "ads.extxyz", run={"max_steps": 4}))
    assert mlip("train", recipe, "--out", run, "-q").exit_code == 0
    assert torch.load(run / "best.pt", weights_only=True)["statistics"]["energy_kind"] == "adsorption"
    assert yaml.safe_load((run / "result.yaml").read_text())["energy_kind"] == "adsorption"

    common = ("--rotations", "0", "--parity", tmp_path / "p.png")
    refused = mlip("eval", run, tmp_path / "total.extxyz", *common)
    assert refused.exit_code == 2
    assert "holds total energies, but the model was trained on adsorption energies" in refused.output
    assert "--any-energy-kind" in refused.output
    allowed = mlip("eval", run, tmp_path / "total.extxyz", *common, "--any-energy-kind", "--json")
    assert allowed.exit_code == 0, allowed.output
    same = mlip("eval", run, tmp_path / "ads_test.extxyz", *common, "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["metrics"]["forces_rmse"] > 0


def test_is2re_labels_are_refused_unless_asked_for(tmp_path):
    write_kind(tmp_path / "is2re.extxyz", 12, 4, labels_at_positions=False)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "is2re.extxyz", run={"max_steps": 4}))
    refused = mlip("train", recipe, "--out", tmp_path / "run", "-q")
    assert refused.exit_code == 2
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "IS2RE labels" in lines[0] and "data.allow_is2re: true" in lines[0]
    assert not (tmp_path / "run").exists()
    direct = mlip(
        "train", recipe, "--out", tmp_path / "run", "-q", "--set", "data.allow_is2re=true", "--set", "loss.forces=0"
    )
    assert direct.exit_code == 0, direct.output


def test_stats_says_when_e0s_are_fitted_to_adsorption_energies(tmp_path):
    write_kind(tmp_path / "ads.extxyz", 6, 1, energy_kind="adsorption")
    write_kind(tmp_path / "total.extxyz", 6, 1, energy_kind="total")
    assert "note: these are adsorption energies" in mlip("data", "stats", tmp_path / "ads.extxyz").output
    assert "adsorption" not in mlip("data", "stats", tmp_path / "total.extxyz").output
    assert json.loads(mlip("data", "stats", tmp_path / "ads.extxyz", "--json").stdout)["energy_kind"] == "adsorption"
