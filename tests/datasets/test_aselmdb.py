"""aselmdb: our reader/writer against ase-db-backends (the format's own library) as the oracle."""

import json
import multiprocessing
import pickle
import zlib

import ase.db as ase_db
import ase_db_backends  # noqa: F401 - the oracle: ase.db.connect finds the .aselmdb backend through it
import lmdb
import numpy as np
import pytest
from datasets_testlib import assert_same_structure, put_aselmdb_values, random_structures

from mlip_datasets import DataError, LabelKeys, Structure
from mlip_datasets.formats import get_format
from mlip_datasets.formats.aselmdb import AseLmdbReader
from mlip_datasets.io import detect_format, open_dataset, write_dataset

FMT = get_format("aselmdb")


def _raw_rows(path):
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        rows = {k.decode(): json.loads(zlib.decompress(v)) for k, v in txn.cursor()}
    env.close()
    return rows


def test_our_file_opens_with_ase_db_backends(tmp_path):
    structures = random_structures(12)
    path = tmp_path / "ours.aselmdb"
    assert FMT.write(path, structures) == len(structures)
    db = ase_db.connect(str(path), readonly=True)
    assert db.count() == len(structures)
    for i, s in enumerate(structures):
        row = db.get(id=i + 1)
        np.testing.assert_array_equal(row.numbers, s.numbers)
        np.testing.assert_array_equal(row.positions, s.positions)
        np.testing.assert_array_equal(row.cell, s.cell)
        np.testing.assert_array_equal(row.pbc, s.pbc)
        for name in ("charge", "spin", "sid", "fid"):
            assert row.data.get(name) == getattr(s, name), name
        assert row.data.get("source") == s.info.get("source")
        atoms = row.toatoms()
        results = {} if atoms.calc is None else atoms.calc.results
        assert results.get("energy") == s.energy
        assert ("forces" in results) == (s.forces is not None) and ("stress" in results) == (s.stress is not None)
        if s.forces is not None:
            np.testing.assert_array_equal(atoms.get_forces(apply_constraint=False), s.forces)
        if s.stress is not None:
            np.testing.assert_allclose(atoms.get_stress(voigt=False), s.stress)
        fixed = atoms.constraints[0].get_indices().tolist() if atoms.constraints else []
        assert fixed == ([] if s.fixed is None else np.flatnonzero(s.fixed).tolist())
        np.testing.assert_array_equal(atoms.get_tags(), 0 if s.tags is None else s.tags)
    db.close()


def test_rows_have_exactly_the_fields_ase_db_backends_writes(tmp_path):
    s = random_structures(1, complete=True)[0]
    get_format("aselmdb").write(tmp_path / "ours.aselmdb", [s])
    db = ase_db.connect(str(tmp_path / "theirs.aselmdb"))
    db.write(s.to_atoms(), data={**s.info, "charge": s.charge, "spin": s.spin, "sid": s.sid, "fid": s.fid})
    db.metadata = {"energy_kind": None, "labels_at_positions": True}  # the label kind our writer states
    db.close()
    ours, theirs = _raw_rows(tmp_path / "ours.aselmdb"), _raw_rows(tmp_path / "theirs.aselmdb")
    assert ours.keys() == theirs.keys() == {"1", "nextid", "metadata"}
    assert ours["nextid"] == theirs["nextid"] == 2
    assert ours["metadata"] == theirs["metadata"]
    assert list(ours["1"]) == list(theirs["1"])  # same fields, same order
    for key, value in theirs["1"].items():
        if key not in ("unique_id", "ctime", "mtime", "user"):
            assert ours["1"][key] == value, key


def test_file_written_by_ase_db_backends_reads(tmp_path):
    from ase.build import fcc111, molecule
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    mol = molecule("H2O")
    path = tmp_path / "theirs.aselmdb"
    db = ase_db.connect(str(path))
    expected = []
    for k, atoms in enumerate([slab, mol]):
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
        db.write(atoms, key_value_pairs={"sid": 10 + k}, data={"charge": -k, "spin": 1 + k})
        expected.append((atoms.copy(), energy, forces))
    db.close()

    reader = FMT.open(path, LabelKeys())
    assert isinstance(reader, AseLmdbReader) and len(reader) == 2
    for s, (atoms, energy, forces) in zip(reader, expected):
        np.testing.assert_array_equal(s.numbers, atoms.numbers)
        np.testing.assert_array_equal(s.positions, atoms.positions)
        np.testing.assert_array_equal(s.cell, atoms.cell[:])
        np.testing.assert_array_equal(s.pbc, atoms.pbc)
        assert s.energy == pytest.approx(energy, abs=0) and np.array_equal(s.forces, forces)
    assert (reader[0].charge, reader[0].spin, reader[0].sid) == (0, 1, 10)
    assert (reader[1].charge, reader[1].spin, reader[1].sid) == (-1, 2, 11)
    assert reader[0].fixed.tolist() == [True] * 4 + [False] * 8 and reader[1].fixed is None
    assert reader[0].stress.shape == (3, 3)


def test_plain_list_rows_from_older_writers(tmp_path):
    # Older ASE encoded arrays as nested lists, constraints as {"__name__": ...}, and had no nextid.
    row = {
        "numbers": [8, 1, 1],
        "positions": [[0, 0, 0.1], [0, 0.76, -0.47], [0, -0.76, -0.47]],
        "cell": [[10, 0, 0], [0, 10, 0], [0, 0, 10]],
        "pbc": 3,
        "energy": -14.2,
        "forces": [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
        "stress": [1, 2, 3, 4, 5, 6],
        "tags": [0, 1, 2],
        "constraints": [{"__name__": "ase.constraints.FixAtoms", "indices": [0]}],
        "key_value_pairs": {"fid": 4},
        "data": {"charge": 1, "spin": 2, "note": "old"},
    }
    path = tmp_path / "old.aselmdb"
    put_aselmdb_values(path, {"1": row})
    s = AseLmdbReader(path)[0]
    assert s.numbers.tolist() == [8, 1, 1] and s.energy == -14.2
    assert s.pbc.tolist() == [True, True, False]  # bitmask 0b011
    np.testing.assert_array_equal(s.forces, row["forces"])
    assert s.stress[0, 1] == 6 and s.stress[1, 2] == 4  # Voigt xx yy zz yz xz xy
    assert s.fixed.tolist() == [True, False, False] and s.tags.tolist() == [0, 1, 2]
    assert (s.charge, s.spin, s.fid) == (1, 2, 4) and s.info == {"note": "old"}


def test_deleted_ids_are_skipped(tmp_path):
    from ase.build import molecule

    path = tmp_path / "del.aselmdb"
    db = ase_db.connect(str(path))
    for k in range(5):
        db.write(molecule("CH4"), data={"k": k})
    db.delete([2, 4])
    db.close()
    reader = AseLmdbReader(path)
    assert len(reader) == 3
    assert [s.info["k"] for s in reader] == [0, 2, 4]
    assert reader.record_name(1) == "del.aselmdb id 3"
    assert reader[-1].info["k"] == 4
    with pytest.raises(IndexError):
        reader[3]


def test_directory_of_shards(tmp_path):
    structures = random_structures(7, seed=1)
    out = tmp_path / "sharded"
    FMT.write(out, structures, shards=3)
    assert sorted(p.name for p in out.iterdir()) == [f"data.{k:04d}.aselmdb" for k in range(3)]
    reader = FMT.open(out, LabelKeys())
    assert len(reader) == 7
    # contiguous blocks of 2, 2 and 3 records: read back shard by shard, the input order survives
    for s, original in zip(reader, structures, strict=True):
        assert_same_structure(original, s)
    assert reader.record_name(3) == "data.0001.aselmdb id 2"
    assert reader._natoms is None and reader.natoms(4) == structures[4].natoms
    # fairchem's metadata.npz beside the shards gives atom counts without decoding rows
    np.savez(out / "metadata.npz", natoms=np.array([s.natoms + 100 for s in structures]))
    with_meta = FMT.open(out, LabelKeys())
    assert [with_meta.natoms(i) for i in range(7)] == [s.natoms + 100 for s in structures]
    assert with_meta._natoms is not None
    with_meta.close()
    reader.close()  # py-lmdb allows one handle per file and process; ase-db-backends opens its own
    # every shard is itself a database ase-db-backends opens
    assert ase_db.connect(str(out / "data.0002.aselmdb"), readonly=True).count() == 3


def test_round_trip_and_label_keys(tmp_path):
    structures = random_structures(8, seed=2)
    path = tmp_path / "rt.aselmdb"
    FMT.write(path, structures)
    reader = FMT.open(path, LabelKeys())
    assert len(reader) == len(structures)
    for a, b in zip(structures, reader):
        assert_same_structure(a, b)
    # a label under another name, e.g. a second level of theory kept in data
    put_aselmdb_values(
        tmp_path / "keys.aselmdb",
        {"1": {"numbers": [1], "positions": [[0, 0, 0]], "energy": 1.0, "data": {"wb97": 2.5, "q": -1}}, "nextid": 2},
    )
    s = AseLmdbReader(tmp_path / "keys.aselmdb", LabelKeys(energy="wb97", charge="q"))[0]
    assert (s.energy, s.charge) == (2.5, -1) and "wb97" not in s.info


def test_reader_survives_pickle_and_fork(tmp_path):
    path = tmp_path / "w.aselmdb"
    FMT.write(path, random_structures(3, complete=True))
    reader = AseLmdbReader(path)
    expected = reader[2].energy
    clone = pickle.loads(pickle.dumps(reader))  # a second reader of the same file in this process
    assert clone[2].energy == expected and AseLmdbReader(path)[2].energy == expected
    with multiprocessing.get_context("fork").Pool(1) as pool:
        # the worker inherits the parent's open handle, closes it and reads through one of its own
        assert pool.map(_energy_of_last, [reader]) == [expected]
        # a DataError raised in a worker arrives intact (it pickles)
        with pytest.raises(DataError, match="record 2: row is listed as live"):
            pool.map(_read_first, [AseLmdbReader(_gap_file(tmp_path))], chunksize=1)


def _energy_of_last(reader):
    return reader[len(reader) - 1].energy


def _read_first(reader):
    return reader[1]


def _gap_file(tmp_path):
    path = tmp_path / "gap.aselmdb"
    put_aselmdb_values(path, {"1": {"numbers": [1], "positions": [[0, 0, 0]]}, "nextid": 3})
    return path


@pytest.mark.parametrize(
    "value, message",
    [
        (b"not zlib at all", "cannot decode value"),
        (zlib.compress(b"{not json"), "cannot decode value"),
        ({"numbers": [1, 1]}, "row has no positions"),
        ({"numbers": [1, 1], "positions": [[0, 0, 0]]}, "positions has shape (1, 3), expected (2, 3)"),
        ({"numbers": [1], "positions": [[0, 0, 0]], "forces": [[1, 2]]}, "forces has shape (1, 2)"),
    ],
)
def test_corrupt_rows_name_file_and_record(tmp_path, value, message):
    path = tmp_path / "bad.aselmdb"
    good = {"numbers": [1], "positions": [[0, 0, 0]]}
    put_aselmdb_values(path, {"1": good, "2": value, "nextid": 3})
    reader = AseLmdbReader(path)
    assert reader[0].natoms == 1
    with pytest.raises(DataError) as err:
        reader[1]
    text = str(err.value)
    assert "bad.aselmdb" in text and "record 2" in text and message in text


def test_missing_row_and_bad_writer_input(tmp_path):
    with pytest.raises(DataError, match="record 2: row is listed as live"):
        AseLmdbReader(_gap_file(tmp_path))[1]
    bad = Structure(numbers=[1, 1], positions=np.zeros((2, 3)), forces=np.zeros((3, 3)))
    with pytest.raises(DataError, match=r"record 0: forces has shape \(3, 3\), expected \(2, 3\)"):
        FMT.write(tmp_path / "out.aselmdb", [bad])


def test_io_detects_writes_and_opens_aselmdb(tmp_path):
    structures = random_structures(5, seed=4)
    write_dataset(tmp_path / "sharded", structures, fmt="aselmdb", shards=2)
    assert detect_format(tmp_path / "sharded").name == "aselmdb"
    assert len(open_dataset(tmp_path / "sharded")) == 5
    write_dataset(tmp_path / "one.aselmdb", structures)
    assert [s.energy for s in open_dataset(tmp_path / "one.aselmdb")] == [s.energy for s in structures]
    bad = Structure(numbers=[1, 1], positions=np.zeros((2, 3)), forces=np.zeros((3, 3)))
    with pytest.raises(DataError, match="forces has shape"):
        write_dataset(tmp_path / "out.aselmdb", [*structures, bad])
    assert not list(tmp_path.glob("*out*"))  # nothing half-written left behind, no stray lock file
    assert not list(tmp_path.glob("*-lock"))
