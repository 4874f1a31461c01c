"""Inputs for the model tests (imported by name; tests/models is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from ase.build import bulk, molecule
from tiny_models import CUTOFF, ELEMENTS, tiny_config  # noqa: F401  (re-exported to the model tests)

from mlip_cli.models import registered_families
from mlip_datasets.generate import slab_adsorbate
from mlip_datasets.graph import structure_to_graph
from mlip_datasets.record import Structure

#: the exact-symmetry suite: every registered family that declares itself equivariant by construction.
FAMILIES = registered_families(exactly_equivariant=True)


def make_structures() -> dict[str, Structure]:
    """A triclinic periodic bulk (two elements), a slab with an adsorbate (pbc TTF), a molecule (no pbc)."""
    rng = np.random.default_rng(0)
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)  # primitive fcc cell: non-orthogonal, 4 atoms
    cu.numbers[1] = 79
    cu.positions += rng.normal(scale=0.08, size=cu.positions.shape)
    mol = molecule("CH3OH")
    mol.positions += rng.normal(scale=0.05, size=mol.positions.shape)
    slab = next(slab_adsorbate(1, seed=3, frames_per_system=1, size=(2, 2, 3)))
    return {
        "bulk": Structure(numbers=cu.numbers, positions=cu.positions, cell=cu.cell.array, pbc=True),
        "slab": slab,
        "molecule": Structure(numbers=mol.numbers, positions=mol.positions),
    }


def make_graphs(structures: dict[str, Structure]) -> dict:
    """float64 neighbour graphs at the test cutoff, by structure name."""
    return {k: structure_to_graph(s, CUTOFF, dtype=torch.float64) for k, s in structures.items()}


def assert_forces_match_finite_difference(model, batch, samples: int, h: float = 1e-5) -> None:
    """``model(batch)`` forces equal the central difference of the energy at ``samples`` random (atom, axis) pairs
    (float64 models); the forces must be non-trivial for the check to mean something."""
    forces = model(batch)["forces"]
    assert forces.abs().max() > 1e-4
    rng = np.random.default_rng(0)
    for atom, comp in zip(rng.integers(0, batch.num_atoms, samples), rng.integers(0, 3, samples)):
        energies = []
        for sign in (1, -1):
            pos = batch.positions.clone()
            pos[atom, comp] += sign * h
            moved = dataclasses.replace(batch, positions=pos)
            energies.append(model(moved, compute_forces=False)["energy"].sum())
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert abs(fd - forces[atom, comp]) < 1e-7 * (1 + forces.abs().max()), (atom, comp)


def assert_grad_matches_finite_difference(loss, param: torch.Tensor, grad: torch.Tensor, h: float = 1e-6) -> None:
    """Central difference of ``loss()`` in ``param[0, 0]`` equals ``grad[0, 0]`` (float64 models)."""
    with torch.no_grad():
        param[0, 0] += h
    up = loss().item()
    with torch.no_grad():
        param[0, 0] -= 2 * h
    down = loss().item()
    with torch.no_grad():
        param[0, 0] += h
    assert abs((up - down) / (2 * h) - grad[0, 0]) < 1e-6 * (1 + grad.abs().max())


def minimise_regularizers(model, batch, steps: int = 24, lr: float = 1e-2) -> None:
    """``steps`` Adam steps on a TransIP model's regularisers alone (their sum; seeded draws)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        losses = model.regularizers(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
