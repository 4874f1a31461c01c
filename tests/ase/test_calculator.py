"""MLIPCalculator: derivatives against finite differences, caching, the skin list, charge/spin, loading."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase_testlib import (
    FAMILIES,
    STRUCTURES,
    finite_difference_forces,
    finite_strain_stress,
    mol,
    periodic_bulk,
    slab,
    tiny_model,
)

from mlip_cli.calculator import MLIPCalculator, SkinNeighborList
from mlip_cli.errors import UsageError
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.neighbors import neighbor_list
from mlip_datasets.record import Structure


@pytest.mark.parametrize("family", FAMILIES)
def test_forces_and_stress_are_finite_differences_of_the_energy(family):
    """float64: forces = -dE/dr and stress = (1/V) dE/d(strain) by central differences, for periodic
    (bulk), mixed (slab xy, wire x) and non-periodic (molecule) structures."""
    calc = MLIPCalculator(tiny_model(family), skin=0.3)
    for name, build in STRUCTURES.items():
        atoms = build()
        atoms.calc = calc
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 1e-3, name  # a non-trivial check
        check = sorted({0, len(atoms) // 2, len(atoms) - 1})  # first, middle and last atom
        np.testing.assert_allclose(
            forces[check], finite_difference_forces(atoms, calc, check), atol=1e-7, rtol=1e-6, err_msg=name
        )
        if name == "molecule":
            with pytest.raises(PropertyNotImplementedError):
                atoms.get_stress()
            continue
        stress = atoms.get_stress()
        assert stress.shape == (6,)
        np.testing.assert_allclose(stress, finite_strain_stress(atoms, calc), atol=1e-8, rtol=1e-6, err_msg=name)


def test_energy_matches_a_direct_model_call_with_a_fresh_graph():
    """The calculator's (skin-filtered) list gives the model the same numbers as a plain graph at the cutoff."""
    model = tiny_model("gaunt")
    calc = MLIPCalculator(model, skin=1.0)
    for build in STRUCTURES.values():
        atoms = build()
        atoms.calc = calc
        batch = collate_graphs([structure_to_graph(Structure.from_atoms(atoms), model.cutoff, torch.float64)])
        out = model(batch)
        assert atoms.get_potential_energy() == pytest.approx(float(out["energy"][0]), abs=1e-11)
        np.testing.assert_allclose(atoms.get_forces(), out["forces"].numpy(), atol=1e-11)
        assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_recomputes_only_when_positions_cell_numbers_or_charge_spin_change():
    calc = MLIPCalculator(tiny_model())
    atoms = periodic_bulk()
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_potential_energy()
    assert calc.model_calls == 1
    atoms.get_stress()  # not computed yet: one more call (stress is computed only when asked)
    atoms.get_forces()
    assert calc.model_calls == 2
    atoms.info["note"] = "not read by the model"
    atoms.set_initial_magnetic_moments(np.ones(len(atoms)))
    atoms.get_forces()
    assert calc.model_calls == 2
    for change in (
        lambda a: a.info.__setitem__("charge", 1),
        lambda a: a.info.__setitem__("spin", 2),
        lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 0.01),
        lambda a: a.set_cell(a.cell.array * 1.01, scale_atoms=True),
        lambda a: a.numbers.__setitem__(0, 28),
    ):
        before = calc.model_calls
        change(atoms)
        atoms.get_potential_energy()
        atoms.get_forces()
        assert calc.model_calls == before + 1
    assert atoms.get_potential_energy() != e0


def test_charge_and_spin_from_info_reach_the_batch():
    calc = MLIPCalculator(tiny_model())
    seen = []
    model = calc.model

    def spy(batch, **kwargs):
        seen.append(batch)
        return model(batch, **kwargs)

    calc.model = spy
    atoms = mol()
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.info.update(charge=-1, spin=2)
    atoms.get_potential_energy()
    assert not seen[0].charge_mask.any() and not seen[0].spin_mask.any()
    assert seen[1].charge.tolist() == [-1.0] and seen[1].spin.tolist() == [2.0]
    assert seen[1].charge_mask.all() and seen[1].spin_mask.all()


def test_skin_list_reuses_the_build_and_never_misses_a_pair():
    """Along a random walk the skin list is rebuilt only when needed, and its filtered pairs are always
    exactly the pairs a fresh list finds (no missing pair, no extra one)."""
    atoms = periodic_bulk() * (2, 2, 2)
    cutoff, skin = 3.5, 0.6
    nl = SkinNeighborList(cutoff, skin)
    rng = np.random.default_rng(0)
    for step in range(40):
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        src, dst, shifts = nl.edges(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)
        ref = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
        got = sorted(zip(src.tolist(), dst.tolist(), map(tuple, shifts.tolist())))
        want = sorted(zip(ref[0].tolist(), ref[1].tolist(), map(tuple, ref[2].tolist())))
        assert got == want, step
    assert 1 < nl.builds < 40


def test_md_with_a_skin_gives_the_same_trajectory_as_rebuilding_every_step():
    from ase.md.verlet import VelocityVerlet

    model = tiny_model()
    runs = []
    for skin in (0.0, 1.0):
        atoms = slab()
        atoms.set_momenta(np.random.default_rng(0).normal(scale=0.3, size=(len(atoms), 3)))
        atoms.calc = MLIPCalculator(model, skin=skin)
        VelocityVerlet(atoms, timestep=1.0).run(30)
        runs.append((atoms.positions.copy(), atoms.calc.neighbors.builds))
    np.testing.assert_allclose(runs[1][0], runs[0][0], atol=1e-10)
    assert runs[0][1] == 31 and runs[1][1] < 31


def test_from_checkpoint_with_dtype_names_and_torch_dtypes(checkpoint):
    atoms = periodic_bulk()
    energies = {}
    for dtype in (None, "float64", torch.float64, "float32", torch.float32):
        calc = MLIPCalculator.from_checkpoint(checkpoint, device="cpu", dtype=dtype)
        assert calc.dtype == (torch.float32 if dtype in ("float32", torch.float32) else torch.float64)
        atoms.calc = calc
        energies[dtype] = atoms.get_potential_energy()
        assert atoms.get_forces().dtype == np.float64
    assert energies["float64"] == energies[None] == energies[torch.float64]
    assert energies["float32"] == pytest.approx(energies["float64"], rel=1e-5)
    with pytest.raises(UsageError, match="float16"):
        MLIPCalculator.from_checkpoint(checkpoint, dtype="float16")


def test_package_exports_the_calculator_lazily():
    code = (
        "import sys, mlip_cli, mlip_cli.cli, mlip_cli.commands.relax, mlip_cli.commands.md; "
        "assert 'torch' not in sys.modules; from mlip_cli import MLIPCalculator; "
        "assert 'torch' in sys.modules; print(MLIPCalculator.implemented_properties)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['energy', 'free_energy', 'forces', 'stress']"


def test_non_finite_positions_give_nan_without_a_model_call():
    calc = MLIPCalculator(tiny_model())
    atoms = periodic_bulk()
    atoms.calc = calc
    atoms.positions[1, 2] = np.nan
    assert np.isnan(atoms.get_potential_energy()) and np.isnan(atoms.get_forces()).all()
    assert calc.model_calls == 0
