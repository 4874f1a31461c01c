"""Units of HDF5 group files: declared by the file (SPICE ``units``, modelforge ``u``), given with ``--units`` /
``units=``, assumed only for ANI-1x's documented convention, refused otherwise; ``info`` says which and whence.

Conversion factors are checked against ASE's constants (CODATA 2014; ours are CODATA 2018, so 1e-7 relative).
"""

import json

import h5py
import numpy as np
import pytest
from ase import units as ase_units
from datasets_testlib import mlip_subprocess, one_error_line, random_structures

from mlip_datasets import DataError, LabelKeys
from mlip_datasets.formats.hdf5 import Hdf5Reader, write
from mlip_datasets.io import open_dataset
from mlip_datasets.units import factor, parse_units

RTOL = 1e-7
KJ_MOL, KCAL_MOL = ase_units.kJ / ase_units.mol, ase_units.kcal / ase_units.mol


@pytest.mark.parametrize(
    "unit, kind, expected",
    [
        ("nm", "length", ase_units.nm),
        ("nanometer", "length", ase_units.nm),
        ("Angstrom", "length", 1.0),
        ("bohr", "length", ase_units.Bohr),
        ("hartree", "energy", ase_units.Hartree),
        ("eV", "energy", 1.0),
        ("kcal/mol", "energy", KCAL_MOL),
        ("kJ/mol", "energy", KJ_MOL),
        ("kilojoule_per_mole", "energy", KJ_MOL),
        ("hartree/bohr", "forces", ase_units.Hartree / ase_units.Bohr),
        ("Hartree/Angstrom", "forces", ase_units.Hartree),
        ("kcal/mol/angstrom", "forces", KCAL_MOL),
        ("kcal/(mol*Å)", "forces", KCAL_MOL),
        ("kilojoule_per_mole / nanometer", "forces", KJ_MOL / ase_units.nm),
        ("kJ/mol/nm", "forces", KJ_MOL / ase_units.nm),
        ("eV/A", "forces", 1.0),
    ],
)
def test_unit_factors_match_ase(unit, kind, expected):
    assert factor(unit, kind) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize(
    "text, message",
    [
        ("energy", "'energy' is not KIND=UNIT"),
        ("mass=kg", "unknown kind 'mass'"),
        ("energy=furlong", "unknown energy unit 'furlong'"),
        ("forces=hartree", "unknown forces unit 'hartree'"),
        ("energy=ev,energy=hartree", "energy is given twice"),
        (",", "no units given"),
    ],
)
def test_parse_units_refuses_bad_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_units(text)
    assert parse_units(" energy = hartree , length=bohr") == {"energy": "hartree", "length": "bohr"}


def _modelforge(path):
    """modelforge's layout: per-dataset unit attribute ``u``, atomic numbers (N, 1), energies (C, 1)."""
    rng = np.random.default_rng(3)
    positions, energies, forces = rng.normal(size=(2, 3, 3)), rng.normal(size=(2, 1)), rng.normal(size=(2, 3, 3))
    with h5py.File(path, "w") as f:
        g = f.create_group("water")
        g["atomic_numbers"] = np.array([[8], [1], [1]])
        g["atomic_numbers"].attrs["u"] = "dimensionless"
        g["positions"] = positions
        g["positions"].attrs.update({"u": "nanometer", "format": "per_atom"})
        g["dft_total_energy"] = energies
        g["dft_total_energy"].attrs.update({"u": "kilojoule_per_mole", "format": "per_system"})
        g["dft_total_force"] = forces
        g["dft_total_force"].attrs.update({"u": "kilojoule_per_mole / nanometer", "format": "per_atom"})
        g["n_configs"] = 2
    return positions, energies, forces


def test_modelforge_units_come_from_the_u_attribute(tmp_path):
    path = tmp_path / "modelforge.hdf5"
    positions, energies, forces = _modelforge(path)
    reader = Hdf5Reader(path, LabelKeys())
    assert len(reader) == 2
    for j in range(2):
        s = reader[j]
        assert s.numbers.tolist() == [8, 1, 1]
        np.testing.assert_allclose(s.positions, positions[j] * ase_units.nm, rtol=RTOL)
        assert s.energy == pytest.approx(energies[j, 0] * KJ_MOL, rel=RTOL)
        np.testing.assert_allclose(s.forces, forces[j] * KJ_MOL / ase_units.nm, rtol=RTOL)
    assert reader.metadata()["units"] == {
        "length": "nanometer (declared by the file)",
        "energy": "kilojoule_per_mole (declared by the file)",
        "forces": "kilojoule_per_mole / nanometer (declared by the file)",
    }
    # the same unit spelt another way agrees with the file; a different one is refused with one line
    assert len(Hdf5Reader(path, LabelKeys(), units={"length": "nm", "energy": "kJ/mol"})) == 2
    with pytest.raises(DataError) as err:
        Hdf5Reader(path, LabelKeys(), units={"energy": "hartree"})
    assert "record /water: the file declares energy in 'kilojoule_per_mole'" in str(err.value)
    assert "units= says 'hartree'" in str(err.value)


def _unitless(path):
    coords, energies = np.arange(18.0).reshape(2, 3, 3), np.array([-1.5, -1.25])
    with h5py.File(path, "w") as f:
        g = f.create_group("mol")
        g["atomic_numbers"] = np.array([8, 1, 1])
        g["coordinates"] = coords
        g["energies"] = energies
    return coords, energies


def test_files_without_units_are_refused_until_units_are_given(tmp_path):
    path = tmp_path / "plain.h5"
    coords, energies = _unitless(path)
    out = mlip_subprocess("data", "info", path)
    line = one_error_line(out)
    assert out.returncode == 2, out.stderr + out.stdout
    assert line.startswith("mlip: error:") and "plain.h5" in line and "record /mol" in line, line
    assert "no units for length, energy" in line and "--units" in line, line
    out = mlip_subprocess("data", "info", path, "--json", "--units", "energy=kcal/mol,length=bohr")
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert summary["units"] == {"length": "bohr (given by the user)", "energy": "kcal/mol (given by the user)"}
    with open_dataset(path, units={"energy": "kcal/mol", "length": "bohr"}) as reader:
        s = reader[1]
    np.testing.assert_allclose(s.positions, coords[1] * ase_units.Bohr, rtol=RTOL)
    assert s.energy == pytest.approx(energies[1] * KCAL_MOL, rel=RTOL)


def test_convert_applies_given_units(tmp_path):
    path = tmp_path / "plain.h5"
    coords, energies = _unitless(path)
    out = mlip_subprocess("data", "convert", path, tmp_path / "out.xyz", "--units", "energy=hartree,length=angstrom")
    assert out.returncode == 0, out.stderr + out.stdout
    from ase.io import read

    frames = read(tmp_path / "out.xyz", ":")
    assert [f.get_potential_energy() for f in frames] == pytest.approx(energies * ase_units.Hartree, rel=RTOL)
    np.testing.assert_allclose(frames[0].positions, coords[0])


def test_ani1x_convention_is_recognised_and_shown(tmp_path):
    """ANI-1x declares no units; its documented convention (Hartree, Angstrom) applies, and info says so."""
    path = tmp_path / "ani1x.h5"
    rng = np.random.default_rng(0)
    coords, forces = rng.normal(size=(3, 2, 3)), rng.normal(size=(3, 2, 3))
    with h5py.File(path, "w") as f:
        g = f.create_group("H2")
        g["atomic_numbers"] = np.array([1, 1])
        g["coordinates"] = coords
        g["wb97x_dz.energy"] = np.array([-1.1, -1.2, -1.3])
        g["wb97x_dz.forces"] = forces
        g["ccsd(t)_cbs.energy"] = np.array([-1.15, np.nan, np.nan])
    out = mlip_subprocess(
        "data", "info", path, "--json", "--energy-key", "ccsd(t)_cbs.energy", "--forces-key", "wb97x_dz.forces"
    )
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert summary["labels"] == {"energy": 1, "forces": 3}
    assert summary["units"] == {
        "length": "angstrom (assumed: ANI-1x convention)",
        "energy": "hartree (assumed: ANI-1x convention)",
        "forces": "hartree/angstrom (assumed: ANI-1x convention)",
    }
    reader = Hdf5Reader(path, LabelKeys(energy="wb97x_dz.energy", forces="wb97x_dz.forces"))
    assert reader[2].energy == pytest.approx(-1.3 * ase_units.Hartree, rel=RTOL)
    np.testing.assert_allclose(reader[2].forces, forces[2] * ase_units.Hartree, rtol=RTOL)
    # a user who says otherwise is taken at their word, and info says so
    reader = Hdf5Reader(path, LabelKeys(energy="wb97x_dz.energy"), units={"energy": "ev"})
    assert reader[0].energy == pytest.approx(-1.1)
    assert reader.metadata()["units"]["energy"] == "ev (given by the user)"


def test_own_layout_states_its_units_and_refuses_others(tmp_path):
    path = tmp_path / "own.h5"
    write(path, random_structures(2, seed=4, complete=True))
    reader = Hdf5Reader(path, LabelKeys(), units={"energy": "eV", "forces": "ev/angstrom"})
    assert reader.metadata()["units"] == {
        "length": "Angstrom (declared by the file)",
        "energy": "eV (declared by the file)",
        "forces": "eV/Angstrom (declared by the file)",
    }
    out = mlip_subprocess("data", "validate", path, "--units", "energy=hartree")
    line = one_error_line(out)
    assert out.returncode == 2 and "own.h5" in line and "mlip-hdf5 files hold Angstrom and eV" in line, line


def test_units_option_is_refused_for_formats_with_fixed_units_and_when_malformed(tmp_path):
    from ase import Atoms
    from ase.io import write as ase_write

    path = tmp_path / "a.xyz"
    ase_write(path, Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]]))
    out = mlip_subprocess("data", "stats", path, "--units", "energy=hartree")
    line = one_error_line(out)
    assert out.returncode == 2 and "a.xyz" in line and "units apply to HDF5 files only" in line, line
    out = mlip_subprocess("data", "info", path, "--units", "energy:hartree")
    line = one_error_line(out)
    assert out.returncode == 2 and line.startswith("mlip: error: --units: 'energy:hartree' is not KIND=UNIT"), line
