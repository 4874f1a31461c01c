"""Symmetry-breaking energy terms: each keeps exactly the symmetries it claims, and forces are -dE/dx."""

import numpy as np
import pytest

from mlip_datasets.generate import generate
from mlip_datasets.symmetry_breaking import TERMS, breaking_term


def _rotation(axis, angle):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


@pytest.fixture(scope="module")
def molecule():
    s = next(iter(generate("molecule", 1, seed=0, rattle=0.1)))
    assert s.natoms >= 5  # enough atoms for a handed (chiral) arrangement
    return s


def _energy(kind, s, positions):
    return breaking_term(kind, s.numbers, positions, None, s.pbc, 2.0)[0]


@pytest.mark.parametrize("kind", TERMS)
def test_forces_are_minus_the_energy_gradient(kind, molecule):
    e, forces = breaking_term(kind, molecule.numbers, molecule.positions, None, molecule.pbc, 2.0)
    assert abs(e) > 1e-6 and np.abs(forces).max() > 1e-6
    h, numeric = 1e-5, np.zeros_like(forces)
    for i in range(molecule.natoms):
        for k in range(3):
            plus, minus = molecule.positions.copy(), molecule.positions.copy()
            plus[i, k] += h
            minus[i, k] -= h
            numeric[i, k] = -(_energy(kind, molecule, plus) - _energy(kind, molecule, minus)) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(
    "kind, rotation_invariant, inversion_invariant",
    [("chiral", True, False), ("uniaxial", False, True), ("field", False, False)],
)
def test_each_term_keeps_exactly_the_symmetries_it_claims(kind, rotation_invariant, inversion_invariant, molecule):
    x = molecule.positions
    e = _energy(kind, molecule, x)
    # every term: translations and rotations about the z axis
    assert _energy(kind, molecule, x + np.array([0.3, -1.2, 2.0])) == pytest.approx(e, abs=1e-12)
    assert _energy(kind, molecule, x @ _rotation([0, 0, 1], 0.7).T) == pytest.approx(e, abs=1e-12)
    tilted = _energy(kind, molecule, x @ _rotation([1, 0.3, 0], 1.1).T)
    inverted = _energy(kind, molecule, -x)
    assert (tilted == pytest.approx(e, abs=1e-12)) == rotation_invariant
    assert (inverted == pytest.approx(e, abs=1e-12)) == inversion_invariant
    if kind == "chiral":
        assert inverted == pytest.approx(-e, abs=1e-12)  # a pseudoscalar: the mirror image has the opposite sign


def test_generator_adds_the_term_and_randomly_orients_molecules():
    plain = list(generate("molecule", 6, seed=2, random_orientation=True))
    broken = list(generate("molecule", 6, seed=2, breaking="uniaxial", strength=3.0))
    for p, b in zip(plain, broken):
        np.testing.assert_array_equal(p.positions, b.positions)  # same structures, same orientation
        e, f = breaking_term("uniaxial", p.numbers, p.positions, None, p.pbc, 3.0)
        assert b.energy == pytest.approx(p.energy + e, abs=1e-12)
        np.testing.assert_allclose(b.forces, p.forces + f, atol=1e-12)
        assert b.info["symmetry_breaking"] == "uniaxial:3"
    canonical = next(iter(generate("molecule", 1, seed=2)))
    assert not np.allclose(canonical.positions, plain[0].positions)


def test_unknown_term_is_refused(molecule):
    with pytest.raises(ValueError, match="unknown symmetry-breaking term 'magnetic'"):
        breaking_term("magnetic", molecule.numbers, molecule.positions, None, molecule.pbc, 1.0)
