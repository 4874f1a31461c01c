"""HDF5: the mlip-hdf5 layout round trip, and ANI/SPICE-style files written here with h5py."""

import multiprocessing
import pickle

import h5py
import numpy as np
import pytest
from datasets_testlib import assert_same_structure, random_structures

from mlip_datasets import DataError, LabelKeys, Structure
from mlip_datasets.formats import get_format
from mlip_datasets.formats.hdf5 import Hdf5Reader, write

HDF5 = get_format("hdf5")
HARTREE, BOHR = 27.211386245988, 0.529177210903


def _structures(n=8, seed=0):
    """Labels that appear late and disappear again, so masks and back-filling are exercised (blocks of 3)."""
    present = {
        "energy": {1, 2, 3, 4, 6, 7},
        "forces": {2, 3, 4, 5, 6, 7},
        "stress": {3},
        "charge": {0, 3, 6},
        "spin": {7},
        "tags": {0, 1, 2, 3},
        "fixed": {6},
        "fid": {1, 3, 5, 7},
    }
    return [
        s.replace(sid=[None, "a", 3, "17"][i % 4], **{name: None for name, at in present.items() if i not in at})
        for i, s in enumerate(random_structures(n, seed, complete=True))
    ]


def test_own_layout_round_trip_with_missing_labels(tmp_path):
    structures = _structures()
    path = tmp_path / "data.h5"
    assert write(path, structures, block=3) == 8  # blocks of 3: labels appear after the first block
    reader = HDF5.open(path, LabelKeys())
    assert len(reader) == 8
    for a, b in zip(structures, reader):
        assert_same_structure(a, b)
    assert [reader.natoms(i) for i in range(8)] == [s.natoms for s in structures]
    assert reader.metadata()["layout"] == "mlip-hdf5"
    # the documented layout, read with plain h5py
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "mlip-hdf5" and f.attrs["version"] == 1 and f.attrs["count"] == 8
        assert f["offsets"][-1] == len(f["numbers"]) == sum(s.natoms for s in structures)
        assert f["has_energy"][:].tolist() == [s.energy is not None for s in structures]
        assert np.isnan(f["energy"][0]) and f["has_forces"][:2].tolist() == [False, False]
        assert f["positions"].shape == (f["offsets"][-1], 3) and f["stress"].shape == (8, 3, 3)


def test_own_layout_without_optional_labels(tmp_path):
    bare = [Structure(numbers=[6, 8], positions=np.eye(2, 3))]
    write(tmp_path / "bare.h5", bare)
    with h5py.File(tmp_path / "bare.h5", "r") as f:
        assert "energy" not in f and "has_forces" not in f
    s = HDF5.open(tmp_path / "bare.h5", LabelKeys())[0]
    assert s.labels() == [] and s.sid is None and s.info == {}


def _ani_file(path):
    """ANI-1x-like: formula groups holding molecule groups; one molecule stores species as symbols."""
    rng = np.random.default_rng(1)
    expected = []
    with h5py.File(path, "w") as f:
        molecules = (("C1H4/mol0", [6, 1, 1, 1, 1]), ("O1H2/mol0", [8, 1, 1]), ("O1H2/mol1", [8, 1, 1]))
        for k, (name, z) in enumerate(molecules):
            g = f.create_group(name)
            m = 2 + k
            coords = rng.normal(size=(m, len(z), 3))
            energies = rng.normal(size=m)
            forces = rng.normal(size=(m, len(z), 3))
            g["coordinates"] = coords
            if name == "O1H2/mol1":
                g["species"] = np.array([b"O", b"H", b"H"])
            else:
                g["atomic_numbers"] = np.array(z)
            g["energies"] = energies
            g["forces"] = forces
            expected += [("/" + name, j, z, coords[j], energies[j], forces[j]) for j in range(m)]
    return expected


def test_ani_style_groups_read_with_their_values(tmp_path):
    path = tmp_path / "ani.h5"
    expected = _ani_file(path)
    with pytest.raises(DataError, match="record /C1H4/mol0: no units for length, energy, forces"):
        HDF5.open(path, LabelKeys())  # nothing says which units: refused rather than taken as eV
    reader = Hdf5Reader(path, LabelKeys(), units={"length": "angstrom", "energy": "ev"})
    assert len(reader) == len(expected) == 2 + 3 + 4
    assert reader.metadata() == {
        "layout": "groups of conformers",
        "units": {
            "length": "angstrom (given by the user)",
            "energy": "ev (given by the user)",
            "forces": "ev/angstrom (given by the user)",
        },
    }
    for i, (group, j, z, coords, energy, forces) in enumerate(expected):
        s = reader[i]
        assert s.numbers.tolist() == z and s.energy == energy
        np.testing.assert_array_equal(s.positions, coords)
        np.testing.assert_array_equal(s.forces, forces)
        assert (s.sid, s.fid) == (group, j) and not s.pbc.any()
        assert reader.natoms(i) == len(z)
    assert reader.record_name(3) == "ani.h5 /O1H2/mol0[1]"


def test_spice_units_gradients_and_user_units(tmp_path):
    path = tmp_path / "spice.hdf5"
    coords = np.array([[[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])
    grad = np.array([[[0.0, 0.0, 0.1], [0.0, 0.0, -0.1]]])
    with h5py.File(path, "w") as f:
        g = f.create_group("hydrogen molecule")
        g["atomic_numbers"] = np.array([1, 1], dtype=np.int16)
        g["conformations"] = coords
        g["conformations"].attrs["units"] = "bohr"
        g["dft_total_energy"] = np.array([-1.17])
        g["dft_total_energy"].attrs["units"] = "hartree"
        g["dft_total_gradient"] = grad
        g["dft_total_gradient"].attrs["units"] = "hartree/bohr"
        g["charge"] = np.array(0)
        h = f.create_group("ani1x/H2")  # no declared units: ANI-1x keeps Hartree and Hartree/Angstrom
        h["atomic_numbers"] = np.array([1, 1])
        h["coordinates"] = coords
        h["wb97x_dz.energy"] = np.array([np.nan])
        h["wb97x_dz.forces"] = grad
    reader = HDF5.open(path, LabelKeys())
    s = reader[1]  # groups in name order: "ani1x/H2", "hydrogen molecule"
    np.testing.assert_allclose(s.positions[1, 2], 2.0 * BOHR)
    assert s.energy == pytest.approx(-1.17 * HARTREE)
    np.testing.assert_allclose(s.forces, -grad[0] * HARTREE / BOHR)  # gradient = -forces
    assert s.charge == 0
    assert reader.metadata()["units"] == {
        "length": "angstrom (assumed: ANI-1x convention); bohr (declared by the file)",
        "energy": "hartree (declared by the file)",
        "forces": "hartree/bohr (declared by the file)",
    }
    # ANI-1x keeps Hartree and Hartree/Angstrom without saying so: recognised by its level-of-theory names
    for units in (None, {"energy": "hartree"}):
        reader = Hdf5Reader(path, LabelKeys(energy="wb97x_dz.energy", forces="wb97x_dz.forces"), units=units)
        ani = reader[0]
        assert ani.energy is None  # NaN: this level of theory is missing for the conformer
        np.testing.assert_allclose(ani.forces, grad[0] * HARTREE)  # Hartree/Angstrom, not negated
        np.testing.assert_array_equal(ani.positions, coords[0])


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda f: f.create_group("m").create_dataset("coordinates", data=np.zeros((2, 3, 3))),
            "record /m: group has coordinates but no atomic_numbers",
        ),
        (
            lambda f: (
                f.create_group("m").create_dataset("coordinates", data=np.zeros((2, 3, 3))),
                f["m"].create_dataset("atomic_numbers", data=[1, 1]),
            ),
            "record /m: 'atomic_numbers' has shape (2,), expected (3,) or (3, 1) or (2, 3) or (2, 3, 1) for 2 "
            "conformers of 3 atoms ('coordinates' has shape (2, 3, 3))",
        ),
        (lambda f: f.create_group("empty"), "no structures found"),
    ],
)
def test_bad_ani_files_name_file_and_group(tmp_path, build, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        build(f)
    with pytest.raises(DataError) as err:
        HDF5.open(path, LabelKeys())
    assert "bad.h5" in str(err.value) and message in str(err.value)


def test_corrupt_files_and_records(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"definitely not hdf5")
    with pytest.raises(DataError, match="junk.h5: not a readable HDF5 file"):
        HDF5.open(tmp_path / "junk.h5", LabelKeys())
    path = tmp_path / "units.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("m")
        g["atomic_numbers"] = np.array([1])
        g["coordinates"] = np.zeros((1, 1, 3))
        g["coordinates"].attrs["units"] = "furlong"
    with pytest.raises(DataError) as err:
        HDF5.open(path, LabelKeys())
    assert str(err.value).startswith(f"{path}: record /m: 'coordinates': unknown length unit 'furlong'"), err.value
    write(tmp_path / "own.h5", _structures(3))
    with h5py.File(tmp_path / "own.h5", "a") as f:
        f["offsets"][-1] = 10_000
    with pytest.raises(DataError, match="own.h5: offsets/natoms do not match"):
        HDF5.open(tmp_path / "own.h5", LabelKeys())


def test_writer_refuses_shards_and_bad_shapes(tmp_path):
    with pytest.raises(DataError, match="single file"):
        write(tmp_path / "x.h5", _structures(2), shards=2)
    bad = Structure(numbers=[1, 1], positions=np.zeros((2, 3)), forces=np.zeros((1, 3)))
    with pytest.raises(DataError, match=r"record 2: forces has shape \(1, 3\)"):
        write(tmp_path / "y.h5", [*_structures(2), bad])


def test_reader_pickles_and_forks(tmp_path):
    path = tmp_path / "w.h5"
    structures = _structures(4)
    write(path, structures)
    reader = HDF5.open(path, LabelKeys())
    assert reader[2].energy == structures[2].energy  # parent opens the file before forking
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._h5 is None and clone[3].energy == structures[3].energy
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(_energy, [(reader, 3)]) == [structures[3].energy]


def _energy(args):
    reader, i = args
    return reader[i].energy
