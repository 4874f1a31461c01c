"""Fixtures for the training tests (helpers live in train_testlib.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlip_datasets.io import write_dataset
from mlip_datasets.record import Structure


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


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """32 rattled metal slabs as extxyz."""
    path = tmp_path_factory.mktemp("data") / "slabs.extxyz"
    write_dataset(path, rattled_metal_slabs(32, seed=1))
    return path
