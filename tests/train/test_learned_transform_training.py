"""TransIP with ``equivariance: learned`` trains end to end with rotation augmentation: the rotation regulariser
is logged and weighted, the transform is trained, saved and loaded, and an old checkpoint (config without the
field) still loads."""

from __future__ import annotations

import csv

import numpy as np
import torch
from train_testlib import tiny_recipe

from mlip_cli.checkpoint import load_checkpoint, load_model
from mlip_cli.models.learned_transform import LatentTransform
from mlip_cli.train import Recipe, run_training
from mlip_cli.train.recipe import load_recipe
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.io import open_dataset


def _recipe(small_data, equivariance: str, symmetry, max_steps: int = 40) -> Recipe:
    recipe = tiny_recipe(
        small_data,
        family="transip",
        run={"max_steps": max_steps, "valid_every": 10, "seed": 0, "dtype": "float64"},
        loss={"symmetry": symmetry},
    )
    recipe["model"].update({"vector_channels": 2, "num_heads": 2, "equivariance": equivariance})
    return Recipe.from_dict(recipe)


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_learned_equivariance_trains_and_saves_the_transform(tmp_path, small_data):
    recipe = _recipe(small_data, "learned", 0.1)
    recipe.run.augment_rotations = True
    run_training(recipe, tmp_path / "learned")

    rows = _rows(tmp_path / "learned")
    assert "symmetry_violation/rotation" in rows[0] and "symmetry_violation/inversion" not in rows[0]
    assert all(np.isfinite(float(r["symmetry_violation/rotation"])) for r in rows)
    assert {float(r["symmetry_weight/rotation"]) for r in rows} == {0.1}  # a fixed weight stays fixed

    learned = load_model(tmp_path / "learned", dtype="float64")
    assert learned.config.equivariance == "learned"
    untrained = LatentTransform(learned.width).double().state_dict()
    moved = [k for k, v in learned.latent_transform.state_dict().items() if not torch.equal(v, untrained[k])]
    assert moved, "the transform was not trained"  # saved with its trained weights and loaded back


def test_a_checkpoint_without_the_field_loads_as_alignment(tmp_path, small_data):
    run = tmp_path / "run"
    run_training(_recipe(small_data, "alignment", "auto", max_steps=2), run)
    ckpt = load_checkpoint(run / "last.pt")
    for key in ("equivariance", "contrastive_temperature"):  # as written before the fields existed
        del ckpt["model_config"][key]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    model, reference = load_model(old, dtype="float64"), load_model(run / "last.pt", dtype="float64")
    assert model.config.equivariance == "alignment" and model.latent_transform is None
    batch = collate_graphs([structure_to_graph(open_dataset(small_data)[0], model.config.cutoff)])
    torch.testing.assert_close(model(batch)["forces"], reference(batch)["forces"], rtol=0, atol=0)


def test_shipped_learned_recipe_selects_the_option():
    recipe = load_recipe("transip-learned")
    assert recipe.model["family"] == "transip" and recipe.model["equivariance"] == "learned"
    assert recipe.data.generate is not None  # self-contained, like the other tiny recipes
