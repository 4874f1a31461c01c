"""MLIPCalculator with an ensemble: the mean as energy/forces/stress, the members' spread as extra results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase_testlib import mol, periodic_bulk, tiny_model, write_checkpoint

from mlip_cli.calculator import ENSEMBLE_PROPERTIES, MLIPCalculator

MEMBERS = 3


@pytest.fixture(scope="module")
def ensemble():
    return tiny_model("tdn", torch.float64, seed=1, ensemble=MEMBERS)


def _member_results(ensemble, atoms, stress: bool):
    """Each member run on its own as a plain model through its own calculator: the independent oracle."""
    energies, forces, stresses = [], [], []
    for k in range(MEMBERS):
        a = atoms.copy()
        a.calc = MLIPCalculator(ensemble.member(k))
        energies.append(a.get_potential_energy())
        forces.append(a.get_forces())
        if stress:
            stresses.append(a.get_stress())
    return np.array(energies), np.array(forces), np.array(stresses)


@pytest.mark.parametrize("make", [periodic_bulk, mol], ids=["bulk", "molecule"])
def test_results_are_the_members_mean_and_spread(ensemble, make):
    atoms = make()
    periodic = atoms.pbc.all()
    energies, forces, stresses = _member_results(ensemble, atoms, periodic)
    atoms.calc = MLIPCalculator(ensemble)
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(0), rtol=0, atol=1e-12)
    calc = atoms.calc
    assert calc.get_property("energy_std", atoms) == pytest.approx(energies.std(), rel=1e-9, abs=1e-13)
    np.testing.assert_allclose(calc.get_property("energy_members", atoms), energies, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(calc.get_property("forces_members", atoms), forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(calc.get_property("forces_std", atoms), forces.std(0), rtol=0, atol=1e-12)
    deviation = forces - forces.mean(0)
    expected_uncertainty = np.sqrt(np.mean(np.sum(deviation**2, axis=-1), axis=0))
    uncertainty = calc.get_property("forces_uncertainty", atoms)
    assert uncertainty.shape == (len(atoms),) and uncertainty.min() > 0  # random members differ
    np.testing.assert_allclose(uncertainty, expected_uncertainty, rtol=0, atol=1e-12)
    if periodic:
        np.testing.assert_allclose(atoms.get_stress(), stresses.mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(calc.get_property("stress_members", atoms), stresses, rtol=0, atol=1e-12)
        np.testing.assert_allclose(calc.get_property("stress_std", atoms), stresses.std(0), rtol=0, atol=1e-12)
    else:
        with pytest.raises(PropertyNotImplementedError):
            calc.get_property("stress_std", atoms)
        assert "stress_std" not in calc.results


def test_identical_members_have_no_spread_and_the_single_members_prediction():
    model = tiny_model("tdn", torch.float64, seed=2, ensemble=MEMBERS)
    for k in range(1, MEMBERS):  # every member a copy of member 0
        model.members[k].load_state_dict(model.members[0].state_dict())
    atoms = periodic_bulk()
    atoms.calc = MLIPCalculator(model)
    stress = atoms.get_stress()
    single = periodic_bulk()
    single.calc = MLIPCalculator(model.member(0))
    r = atoms.calc.results
    assert r["energy"] == single.get_potential_energy()  # exactly member 0's prediction, and exactly no spread
    np.testing.assert_array_equal(r["forces"], single.get_forces())
    np.testing.assert_array_equal(stress, single.get_stress())
    assert r["energy_std"] == 0.0
    for key in ("forces_std", "forces_uncertainty", "stress_std"):
        np.testing.assert_array_equal(r[key], 0.0, err_msg=key)


def test_spread_follows_a_rotation(ensemble):
    """An exactly equivariant family in float64: energy std and per-atom force uncertainty are invariant, every
    member's forces rotate with the structure."""
    atoms = mol()
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotation *= np.sign(np.linalg.det(rotation))  # proper rotation
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    results = []
    for a in (atoms, rotated):
        a.calc = MLIPCalculator(ensemble)
        a.get_forces()
        results.append(a.calc.results)
    base, turned = results
    assert turned["energy_std"] == pytest.approx(base["energy_std"], rel=1e-9)
    np.testing.assert_allclose(turned["forces_uncertainty"], base["forces_uncertainty"], rtol=1e-9, atol=1e-12)
    expected = np.einsum("ij,knj->kni", rotation, base["forces_members"])
    np.testing.assert_allclose(turned["forces_members"], expected, rtol=0, atol=1e-10)
    assert not np.allclose(turned["forces_members"], base["forces_members"], atol=1e-3)  # they did turn


def test_plain_models_have_no_spread(checkpoint):
    atoms = mol()
    atoms.calc = MLIPCalculator.from_checkpoint(checkpoint)
    atoms.get_forces()
    assert not set(ENSEMBLE_PROPERTIES) & set(atoms.calc.results)
    assert not set(ENSEMBLE_PROPERTIES) & set(atoms.calc.implemented_properties)
    with pytest.raises(PropertyNotImplementedError):
        atoms.calc.get_property("forces_uncertainty", atoms)


def test_an_ensemble_checkpoint_gives_the_same_spread(ensemble, tmp_path):
    path = write_checkpoint(tmp_path / "ensemble.pt", ensemble)
    atoms = periodic_bulk()
    direct = MLIPCalculator(ensemble)
    loaded = MLIPCalculator.from_checkpoint(path)
    for calc in (direct, loaded):
        calc.get_property("stress_std", atoms)
    for key in ENSEMBLE_PROPERTIES:
        np.testing.assert_array_equal(loaded.results[key], direct.results[key], err_msg=key)


def test_non_finite_positions_give_nan_spread(ensemble):
    atoms = periodic_bulk()
    atoms.positions[0, 0] = np.nan
    atoms.calc = MLIPCalculator(ensemble)
    assert np.isnan(atoms.calc.get_property("forces_uncertainty", atoms)).all()
    assert np.isnan(atoms.calc.get_property("energy_std", atoms))
    assert atoms.calc.model_calls == 0
