"""Recipe builders shared by the training tests (imported by name; tests/train is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from mlip_datasets.record import Structure


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


def rattled_metal_slabs(n: int, seed: int) -> list[Structure]:
    """Cu/Au fcc(111) slabs (12 atoms, periodic in x and y, bottom layer fixed), rattled, with EMT labels.

    EMT is fitted for these metals, so the forces are smooth and a tiny model learns them in tens of steps.
    """
    from ase.build import fcc111
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
        slab.numbers[rng.random(len(slab)) < 0.3] = 79
        slab.rattle(stdev=0.03 + 0.1 * rng.random(), seed=int(rng.integers(2**31)))
        slab.calc = EMT()
        out.append(
            Structure(
                numbers=slab.numbers,
                positions=slab.positions,
                cell=slab.cell.array,
                pbc=slab.pbc,
                energy=slab.get_potential_energy(),
                forces=slab.get_forces(),
                fixed=slab.get_tags() == 3,
                sid=i,
                fid=0,
            )
        )
    return out
