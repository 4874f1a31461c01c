"""Batched FIRE / L-BFGS against ASE's own optimizers, constraints, failures and cell relaxation."""

from __future__ import annotations

import numpy as np
import pytest
from ase.filters import FrechetCellFilter
from ase_testlib import overlapping, periodic_bulk, tiny_model

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.relax import CONVERGED, FAILED, NOT_CONVERGED, relax_structures
from mlip_cli.relax.batched import chunks_by_atoms
from mlip_datasets.generate import generate
from mlip_datasets.record import Structure


@pytest.fixture(scope="module")
def model():
    """Untrained: fine wherever convergence is not asserted (its landscape is rough and relaxations slow)."""
    return tiny_model()


@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    """Briefly trained on slab+adsorbate data: relaxations converge in well under 300 steps."""
    from mlip_cli.checkpoint import load_model

    return load_model(trained_checkpoint)


@pytest.fixture(scope="module")
def structures():
    """Three rattled molecules and an OC20-like slab (bottom layers fixed, tags 0/1/2)."""
    mols = list(generate("molecule", 3, seed=2))
    slab = next(generate("slab-adsorbate", 1, seed=0, frames_per_system=1, size=(2, 2, 3)))
    assert slab.fixed.any() and not slab.fixed.all()
    return mols + [slab]


@pytest.mark.parametrize("optimizer, tol", [("FIRE", 1e-9), ("LBFGS", 1e-7)])
def test_batched_optimizer_follows_ase_step_for_step(model, structures, optimizer, tol):
    """The batched torch optimizer reproduces ASE's optimizer (with MLIPCalculator and FixAtoms) frame by frame."""
    kw = dict(fmax=0.01, steps=12, trajectory=True)
    batched = relax_structures(model, structures, optimizer, batched=True, **kw)
    ase = relax_structures(model, structures, optimizer, batched=False, **kw)
    for a, b in zip(ase, batched):
        assert (a.status, a.steps) == (b.status, b.steps)
        assert len(a.trajectory) == len(b.trajectory) == a.steps + 1
        for fa, fb in zip(a.trajectory, b.trajectory):
            np.testing.assert_allclose(fb.positions, fa.positions, atol=tol, rtol=0)
        assert b.energy == pytest.approx(a.energy, abs=1e-8)
    moved = [np.abs(r.structure.positions - s.positions).max() for r, s in zip(batched, structures)]
    assert min(moved) > 1e-3  # they really moved


@pytest.mark.parametrize("optimizer, batched", [("FIRE", True), ("LBFGS", True), ("BFGS", False), ("FIRE", False)])
def test_relaxed_slab_keeps_fixed_atoms_exactly_in_place(trained, structures, optimizer, batched):
    slab = structures[-1]
    (result,) = relax_structures(trained, [slab], optimizer, fmax=0.05, steps=300, batched=batched)
    assert result.status == CONVERGED
    out = result.structure
    assert np.array_equal(out.positions[slab.fixed], slab.positions[slab.fixed])
    assert not np.allclose(out.positions[~slab.fixed], slab.positions[~slab.fixed])
    free_forces = np.linalg.norm(out.forces[~slab.fixed], axis=1)
    assert free_forces.max() == pytest.approx(result.fmax) and result.fmax < 0.05
    assert np.array_equal(out.fixed, slab.fixed) and np.array_equal(out.tags, slab.tags)
    assert out.info["relax_converged"] is True and out.info["relax_steps"] == result.steps


def test_fix_tags_fixes_oc20_subsurface_atoms(model, structures):
    slab = structures[-1].replace(fixed=None)
    (result,) = relax_structures(model, [slab], "FIRE", fmax=0.05, steps=20, fix_tags=(0,))
    sub = slab.tags == 0
    assert sub.any()
    assert np.array_equal(result.structure.positions[sub], slab.positions[sub])


def test_nan_and_exploding_structures_fail_alone(model, structures):
    bad = Structure.from_atoms(overlapping())
    inputs = [structures[0], bad, structures[1]]
    results = relax_structures(model, inputs, "FIRE", fmax=0.05, steps=30)
    assert [r.status for r in results] == [NOT_CONVERGED, FAILED, NOT_CONVERGED]
    assert "NaN" in results[1].message and results[1].structure is None
    good = relax_structures(model, [structures[0]], "FIRE", fmax=0.05, steps=30)[0]
    np.testing.assert_allclose(results[0].structure.positions, good.structure.positions, atol=1e-9)
    for batched in (True, False):
        exploded = relax_structures(model, [structures[0]], "FIRE", steps=5, max_force=1e-3, batched=batched)[0]
        assert exploded.status == FAILED and "exploded" in exploded.message


def test_out_of_steps_is_not_converged_and_chunking_changes_nothing(model, structures):
    one = relax_structures(model, structures, "LBFGS", fmax=0.01, steps=7)
    split = relax_structures(model, structures, "LBFGS", fmax=0.01, steps=7, batch_atoms=10)
    assert [r.status for r in one] == [NOT_CONVERGED] * len(structures)
    for a, b in zip(one, split):
        np.testing.assert_allclose(a.structure.positions, b.structure.positions, atol=1e-9)
        assert a.structure.info["relax_converged"] is False
    assert chunks_by_atoms([5, 5, 3, 20, 1], 10) == [[0, 1], [2], [3], [4]]


def test_cell_relaxation_converges_cell_forces_too(trained):
    """After --relax-cell, a fresh ASE FrechetCellFilter (an independent check) sees every atomic and cell
    force near or below fmax, and the cell really changed. Near: the relaxing filter measured the forces in the
    frame of the starting cell, the fresh one in the final cell's (a few percent apart here)."""
    start = Structure.from_atoms(periodic_bulk())
    (result,) = relax_structures(trained, [start], "BFGS", fmax=0.02, steps=300, relax_cell=True)
    assert result.status == CONVERGED
    atoms = result.structure.to_atoms()
    atoms.calc = MLIPCalculator(trained)
    gradient = FrechetCellFilter(atoms).get_forces()
    assert np.linalg.norm(gradient, axis=1).max() < 0.02 * 1.1
    # the cell rows are the virial per atom, -V sigma / N: the stress itself is relaxed
    np.testing.assert_allclose(
        gradient[-3:], -atoms.get_volume() * _matrix(atoms.get_stress()) / len(atoms), atol=1e-10
    )
    assert not np.allclose(atoms.cell.array, start.cell, atol=1e-3)
    assert result.structure.stress is not None


def _matrix(v):
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
