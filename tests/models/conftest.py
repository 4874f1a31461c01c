"""Session fixtures for the model tests (the builders live in models_testlib.py)."""

from __future__ import annotations

import pytest
from models_testlib import make_graphs, make_structures


@pytest.fixture(scope="session")
def structures():
    """A triclinic periodic bulk (two elements), a slab with an adsorbate (pbc TTF), a molecule (no pbc)."""
    return make_structures()


@pytest.fixture(scope="session")
def graphs(structures):
    """float64 neighbour graphs at the test cutoff, by structure name."""
    return make_graphs(structures)
