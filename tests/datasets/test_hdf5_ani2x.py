"""The ANI-2x release layout: root groups named by atom count (``/003``, ``/004``), each with ``coordinates``
(C, N, 3), ``species`` (C, N) atomic numbers (one row per conformer: different molecules share a group),
``energies`` (C,) in Hartree and ``forces`` (C, N, 3) in Hartree/Angstrom, no unit attributes.

The fixture is generated here; the oracle is the file read back with plain h5py and ASE's Hartree.
"""

import h5py
import numpy as np
import pytest
from ase import units as ase_units
from datasets_testlib import mlip_subprocess, one_error_line

from mlip_datasets import DataError, LabelKeys
from mlip_datasets.formats.hdf5 import Hdf5Reader


def _ani2x(path, counts=None, **replace):
    """Groups ``/003`` and ``/004`` of random H/C/N/O/F/S/Cl species rows; ``replace`` swaps a dataset of
    ``/004`` for another array (to corrupt it)."""
    rng = np.random.default_rng(7)
    elements = np.array([1, 6, 7, 8, 9, 16, 17])
    with h5py.File(path, "w") as f:
        for natoms, conformers in (counts or {3: 4, 4: 3}).items():
            g = f.create_group(f"{natoms:03d}")
            data = {
                "species": rng.choice(elements, size=(conformers, natoms)),
                "coordinates": rng.normal(size=(conformers, natoms, 3)),
                "energies": rng.normal(size=conformers) - 100,
                "forces": rng.normal(size=(conformers, natoms, 3)),
            }
            if natoms == 4:
                data.update(replace)
            for name, value in data.items():
                g[name] = value
    return path


def test_ani2x_release_layout_reads_each_conformer_with_its_own_species(tmp_path):
    path = _ani2x(tmp_path / "ANI-2x-wB97X-631Gd.h5")
    reader = Hdf5Reader(path, LabelKeys())
    assert len(reader) == 4 + 3
    with h5py.File(path, "r") as f:
        expected = [(name, j, f[name]) for name in ("003", "004") for j in range(f[name]["energies"].shape[0])]
        assert len({tuple(row) for row in f["003/species"][:]}) > 1  # the group mixes molecules
        for i, (name, j, g) in enumerate(expected):
            s = reader[i]
            assert s.numbers.tolist() == g["species"][j].tolist()
            np.testing.assert_array_equal(s.positions, g["coordinates"][j])
            assert s.energy == pytest.approx(g["energies"][j] * ase_units.Hartree, rel=1e-7)
            np.testing.assert_allclose(s.forces, g["forces"][j] * ase_units.Hartree, rtol=1e-7)
            assert (s.sid, s.fid, reader.natoms(i)) == (f"/{name}", j, int(name))
    assert reader.metadata()["units"] == {
        "length": "angstrom (assumed: ANI-2x convention)",
        "energy": "hartree (assumed: ANI-2x convention)",
        "forces": "hartree/angstrom (assumed: ANI-2x convention)",
    }
    out = mlip_subprocess("data", "validate", path)
    assert out.returncode == 0 and "0 of 7 records bad" in out.stdout, out.stderr + out.stdout


@pytest.mark.parametrize(
    "name, value, needle",
    [
        ("species", np.ones((2, 4), dtype=int), "'species' has shape (2, 4), expected (4,) or (4, 1) or (3, 4)"),
        ("species", np.ones((3, 5), dtype=int), "'species' has shape (3, 5)"),
        ("energies", np.zeros(4), "'energies' has shape (4,), expected (3,) or (3, 1)"),
        ("forces", np.zeros((3, 3, 3)), "'forces' has shape (3, 3, 3), expected (3, 4, 3) for 3 conformers of 4"),
        ("species", np.full((3, 4), 1.5), "'species' has dtype float64, expected integers or element symbols"),
    ],
    ids=["fewer-species-rows", "species-too-long", "more-energies", "short-forces", "float-species"],
)
def test_ani2x_groups_whose_sizes_disagree_are_refused_with_one_line(tmp_path, name, value, needle):
    path = _ani2x(tmp_path / "bad.h5", **{name: value})
    with pytest.raises(DataError) as err:
        Hdf5Reader(path, LabelKeys())
    assert str(err.value).startswith(f"{path}: record /004: "), err.value
    assert needle in str(err.value), err.value
    out = mlip_subprocess("data", "info", path)
    line = one_error_line(out)
    assert out.returncode == 2 and "bad.h5" in line and "record /004" in line and needle in line, line
