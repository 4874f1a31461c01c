"""Fixtures for the training tests (helpers live in train_testlib.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_testlib import rattled_metal_slabs

from mlip_datasets.io import write_dataset


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """32 rattled metal slabs as extxyz."""
    path = tmp_path_factory.mktemp("data") / "slabs.extxyz"
    write_dataset(path, rattled_metal_slabs(32, seed=1))
    return path
