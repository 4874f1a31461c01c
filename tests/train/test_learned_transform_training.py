"""TransIP with ``equivariance: learned`` trains end to end: the regulariser falls, the forces come out more
equivariant than without it, checkpoints load, and an old checkpoint (config without the field) still loads."""

from __future__ import annotations

import csv

import numpy as np
import torch
from train_testlib import tiny_recipe

from mlip_cli.checkpoint import load_checkpoint, load_model
from mlip_cli.train import Recipe, run_training
from mlip_cli.train.recipe import load_recipe
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.io import open_dataset
from mlip_datasets.record import Structure
from mlip_kernels.wigner import random_rotation


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


def _force_rotation_error(model, structures: list[Structure], seed: int = 5) -> float:
    """Relative rms of ``F(R x) - R F(x)``, the rotated structures built in numpy (positions and cell)."""
    rotations = random_rotation(len(structures), generator=torch.Generator().manual_seed(seed)).numpy()
    cutoff = model.config.cutoff

    def forces(items):
        batch = collate_graphs([structure_to_graph(s, cutoff, dtype=torch.float64) for s in items])
        return model(batch)["forces"].detach().numpy()

    moved = [
        Structure(numbers=s.numbers, positions=s.positions @ R.T, cell=np.asarray(s.cell) @ R.T, pbc=s.pbc)
        for s, R in zip(structures, rotations)
    ]
    f, f_moved = forces(structures), forces(moved)
    counts = [len(s.numbers) for s in structures]
    expected = np.concatenate([fi @ R.T for fi, R in zip(np.split(f, np.cumsum(counts)[:-1]), rotations)])
    return float(np.sqrt(((f_moved - expected) ** 2).sum() / (expected**2).sum()))


def test_learned_equivariance_trains_and_makes_forces_more_equivariant(tmp_path, small_data):
    run_training(_recipe(small_data, "learned", 10.0), tmp_path / "learned")
    run_training(_recipe(small_data, "learned", 0), tmp_path / "plain")

    rows = _rows(tmp_path / "learned")
    for t in ("rotation", "inversion"):
        first, last = float(rows[0][f"symmetry_violation/{t}"]), float(rows[-1][f"symmetry_violation/{t}"])
        assert last < first / 2, (t, first, last)

    structures = [open_dataset(small_data)[i] for i in range(8)]
    learned = load_model(tmp_path / "learned", dtype="float64")
    plain = load_model(tmp_path / "plain", dtype="float64")
    assert learned.latent_transforms is not None  # the transforms are saved and load back
    error_learned, error_plain = _force_rotation_error(learned, structures), _force_rotation_error(plain, structures)
    assert error_learned < 0.6 * error_plain, (error_learned, error_plain)  # measured: 0.087 against 0.21


def test_a_checkpoint_without_the_field_loads_as_alignment(tmp_path, small_data):
    run = tmp_path / "run"
    run_training(_recipe(small_data, "alignment", "auto", max_steps=2), run)
    ckpt = load_checkpoint(run / "last.pt")
    for key in ("equivariance", "contrastive_temperature"):  # as written before the fields existed
        del ckpt["model_config"][key]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    model, reference = load_model(old, dtype="float64"), load_model(run / "last.pt", dtype="float64")
    assert model.config.equivariance == "alignment" and model.latent_transforms is None
    batch = collate_graphs([structure_to_graph(open_dataset(small_data)[0], model.config.cutoff)])
    torch.testing.assert_close(model(batch)["forces"], reference(batch)["forces"], rtol=0, atol=0)


def test_shipped_learned_recipe_selects_the_option():
    recipe = load_recipe("transip-learned")
    assert recipe.model["family"] == "transip" and recipe.model["equivariance"] == "learned"
    assert recipe.data.generate is not None  # self-contained, like the other tiny recipes
