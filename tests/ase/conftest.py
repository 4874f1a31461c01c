"""Fixtures for the ASE-integration tests (builders live in ase_testlib.py)."""

from __future__ import annotations

import pytest
import torch
from ase_testlib import tiny_model, write_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An untrained float64 tdn checkpoint (tiny)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model("tdn", torch.float64))


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A tiny tdn model trained for 120 steps (about 3 s) in float64 on EMT slab+adsorbate data, through
    ``mlip_cli.train.run_training``: a smooth, physically shaped potential for the NVE test."""
    from mlip_cli.train import Recipe, run_training

    recipe = Recipe.from_dict(
        {
            "name": "nve-tiny",
            "model": {
                "family": "tdn",
                "cutoff": 4.0,
                "channels": 8,
                "lmax": 1,
                "num_interactions": 2,
                "num_radial": 6,
                "radial_hidden": 16,
                "readout_hidden": 8,
            },
            "data": {
                "generate": {"kind": "slab-adsorbate", "n": 40, "seed": 0, "size": [2, 2, 3]},
                "split": [0.75, 0.25],
                "batch_size": 4,
            },
            "optim": {"lr": 0.01, "warmup_steps": 5},
            "run": {"max_steps": 120, "valid_every": 60, "seed": 0, "dtype": "float64", "device": "cpu", "threads": 1},
        }
    )
    run_dir = tmp_path_factory.mktemp("trained")
    run_training(recipe, run_dir, log=lambda *args, **kwargs: None)
    return run_dir / "best.pt"
