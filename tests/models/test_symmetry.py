"""The symmetry group's generators: what each draws, what the symmetrisation averages over, how a batch moves, and
the random draws each takes (resumed runs and seeded reports replay them)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlip_cli.models.symmetry import INVERSION, ROTATION, SYMMETRY_TYPES, averaging_elements, draw, transform_batch
from mlip_datasets.graph import collate_graphs
from mlip_kernels.wigner import random_rotation


def test_generators_are_a_proper_rotation_and_the_inversion():
    assert SYMMETRY_TYPES == (ROTATION, INVERSION) == ("rotation", "inversion")
    R = draw(ROTATION, 5, torch.Generator().manual_seed(0))
    assert R.shape == (5, 3, 3) and R.dtype == torch.float64
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(5, dtype=torch.float64))
    assert torch.equal(draw(INVERSION, 2), -torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    with pytest.raises(ValueError, match="unknown symmetry type 'reflection'; known: rotation, inversion"):
        draw("reflection", 1)


def test_random_draws_are_those_of_random_rotation():
    # a rotation is one random_rotation call on the given generator (or torch's global RNG); the inversion none
    ours = draw(ROTATION, 3, torch.Generator().manual_seed(7))
    assert torch.equal(ours, random_rotation(3, generator=torch.Generator().manual_seed(7)))
    gen = torch.Generator().manual_seed(7)
    elements = averaging_elements(ROTATION, 3, rotations=4, generator=gen)
    ref = torch.Generator().manual_seed(7)
    assert len(elements) == 4 and all(torch.equal(e, random_rotation(3, generator=ref)) for e in elements)
    torch.manual_seed(1)
    draw(INVERSION, 3)
    averaging_elements(INVERSION, 3, rotations=4)
    after = torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after)  # the inversion took no draw from the global RNG


def test_the_inversion_is_averaged_over_exactly():
    eye = torch.eye(3, dtype=torch.float64)
    elements = averaging_elements(INVERSION, 2, rotations=4)
    assert len(elements) == 2 and torch.equal(elements[0], eye.expand(2, 3, 3))
    assert torch.equal(elements[1], -eye.expand(2, 3, 3))


def test_transform_batch_moves_positions_cell_forces_and_stress(graphs):
    batch = collate_graphs([graphs["bulk"], graphs["molecule"]])
    batch = dataclasses.replace(
        batch, forces=torch.randn_like(batch.positions), stress=torch.randn(2, 3, 3, dtype=batch.positions.dtype)
    )
    R = draw(ROTATION, 2, torch.Generator().manual_seed(3))
    moved = transform_batch(batch, R)
    atom_R = R[batch.batch]
    torch.testing.assert_close(moved.positions, torch.einsum("nij,nj->ni", atom_R, batch.positions))
    torch.testing.assert_close(moved.forces, torch.einsum("nij,nj->ni", atom_R, batch.forces))
    torch.testing.assert_close(moved.cell, torch.einsum("bij,bkj->bki", R, batch.cell))  # cell vectors are rows
    torch.testing.assert_close(moved.stress, R @ batch.stress @ R.transpose(1, 2))
    assert torch.equal(moved.energy, batch.energy) and torch.equal(moved.edge_index, batch.edge_index)
    assert torch.equal(moved.shifts, batch.shifts)
