"""Recipe builders shared by the training tests (imported by name; tests/train is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import yaml


def tiny_recipe(data_path: Path, family: str = "tdn", **sections) -> dict:
    """A recipe dict that trains in a second or two; ``sections`` update the defaults per section."""
    recipe = {
        "name": f"test-{family}",
        "model": {
            "family": family,
            "cutoff": 4.0,
            "channels": 4,
            "lmax": 1,
            "num_interactions": 2,
            "num_radial": 4,
            "radial_hidden": 8,
            "readout_hidden": 4,
        },
        "data": {"train": str(data_path), "split": [0.75, 0.25], "batch_size": 4},
        "loss": {"energy": 1.0, "forces": 10.0},
        "optim": {"lr": 0.01, "warmup_steps": 2},
        "run": {"max_steps": 12, "valid_every": 4, "seed": 0, "threads": 1},
    }
    if family == "transip":
        del recipe["model"]["lmax"]  # no spherical-harmonic degree: its vectors are Cartesian
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
