"""Conversion keeps what the source says: record order across shards, the energy kind and IS2RE marking, the info
values extxyz's comment line would change, per-atom calculator results; the native store refuses atomic numbers
that no element has."""

from __future__ import annotations

import json
import pickle

import ase.db as ase_db
import ase_db_backends  # noqa: F401 - the oracle: ase.db.connect finds the .aselmdb backend through it
import lmdb
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read as ase_read
from cli_runner import mlip
from datasets_testlib import FLOAT32, assert_same_structure, random_structures

from mlip_datasets.errors import DataError
from mlip_datasets.formats import oc20_lmdb
from mlip_datasets.formats.native import NativeReader
from mlip_datasets.io import open_dataset, write_dataset
from mlip_datasets.label_kind import label_kind
from mlip_datasets.record import Structure
from mlip_datasets.validate import validate

# ---- 1. order across shards -------------------------------------------------------------------------------


def _sids(reader) -> list:
    return [reader[i].sid for i in range(len(reader))]


@pytest.mark.parametrize("count", [7, 2])  # 7 does not divide by 3; 2 leaves a shard empty
@pytest.mark.parametrize("fmt", ["native", "aselmdb", "oc20"])
def test_sharded_writers_keep_the_order(tmp_path, fmt, count):
    structures = random_structures(count, seed=3, complete=True)
    for k, s in enumerate(structures):
        s.sid = f"s{k}"
    out = tmp_path / "out"
    assert write_dataset(out, iter(structures), fmt, shards=3) == count  # a stream: no len() up front
    with open_dataset(out) as reader:
        assert len(reader) == count
        tolerance = FLOAT32 if fmt == "oc20" else None
        for original, back in zip(structures, reader, strict=True):
            assert_same_structure(original, back, tolerance=tolerance, info=False)


def test_sharded_aselmdb_order_as_ase_db_backends_walks_it(tmp_path):
    """fairchem's AseDBDataset walks the shards in sorted name order and each shard's rows in id order."""
    structures = random_structures(11, seed=4)
    src = tmp_path / "src"  # native: exact, so positions compare bit for bit
    write_dataset(src, structures)
    result = mlip("data", "convert", src, tmp_path / "out", "--to", "aselmdb", "--shards", "3")
    assert result.exit_code == 0, result.output
    walked = []
    for shard in sorted((tmp_path / "out").glob("*.aselmdb")):
        db = ase_db.connect(str(shard), readonly=True)
        walked += [row.positions for row in db.select(sort="id")]
        db.close()
    assert len(walked) == 11
    for original, positions in zip(structures, walked, strict=True):
        np.testing.assert_array_equal(positions, original.positions)


def test_sharded_oc20_order_as_pyg_loaders_walk_it(tmp_path):
    import torch_geometric  # noqa: F401 - the oracle: pickle.loads rebuilds PyG Data objects, as OC20 loaders do

    structures = random_structures(8, seed=5, complete=True)
    write_dataset(tmp_path / "s2ef", structures, "oc20", shards=3)
    walked = []
    for shard in sorted((tmp_path / "s2ef").glob("*.lmdb")):
        env = lmdb.open(str(shard), subdir=False, readonly=True, lock=False)
        with env.begin() as txn:
            length = pickle.loads(txn.get(b"length"))
            walked += [pickle.loads(txn.get(str(k).encode())).pos.numpy() for k in range(length)]
        env.close()
    for original, pos in zip(structures, walked, strict=True):
        np.testing.assert_allclose(pos, original.positions, rtol=1e-6, atol=1e-6)


# ---- 2. a native .lmdb says what it is ---------------------------------------------------------------------


def test_native_lmdb_output_says_foreign_readers_see_nothing(tmp_path):
    src = tmp_path / "src.extxyz"
    write_dataset(src, random_structures(3, seed=6))
    result = mlip("data", "convert", src, tmp_path / "out.lmdb")
    assert result.exit_code == 0 and "not an OC20/PyG LMDB" in result.output, result.output
    result = mlip("data", "info", tmp_path / "out.lmdb", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["format"] == "native" and "not an OC20/PyG LMDB" in summary["note"]
    # with --to oc20 the same extension holds records PyG-style readers see
    result = mlip("data", "convert", src, tmp_path / "pyg.lmdb", "--to", "oc20")
    assert result.exit_code == 0 and "not an OC20" not in result.output, result.output


# ---- 3. energy kind and labels_at_positions ----------------------------------------------------------------


def _put(path, values: list[bytes]):
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(str(i).encode(), value)
        txn.put(b"length", pickle.dumps(len(values), protocol=4))
    env.close()
    return path


def _oc20_file(path, kind: str, count: int = 4):
    """An OC20-style LMDB as the releases hold them: S2EF (y, force), IS2RE (y_init/y_relaxed, initial pos) or
    OC22 S2EF (oc22=1)."""
    rng = np.random.default_rng(len(str(path)))
    values = []
    for i in range(count):
        n = 3 + i
        fields = {
            "pos": rng.normal(size=(n, 3)).astype(np.float32) * 3,
            "cell": (np.eye(3) * 9).reshape(1, 3, 3).astype(np.float32),
            "atomic_numbers": rng.integers(1, 60, n).astype(np.float32),
            "natoms": n,
            "tags": rng.integers(0, 3, n),
            "fixed": (rng.random(n) < 0.3).astype(np.float32),
            "sid": 100 + i,
        }
        if kind == "is2re":
            fields.update(y_init=1.25 + i, y_relaxed=-0.5 - i, pos_relaxed=fields["pos"] + 0.25)
        else:
            fields.update(y=0.5 * i - 1, force=rng.normal(size=(n, 3)).astype(np.float32))
        if kind == "oc22":
            fields["oc22"] = 1
        values.append(oc20_lmdb.encode_data(fields))
    return _put(path, values)


EXPECTED = {"s2ef": ("adsorption", True), "is2re": ("adsorption", False), "oc22": ("oc22_total", True)}
TARGETS = [("native", "store"), ("aselmdb", "one.aselmdb"), ("extxyz", "f.extxyz"), ("asedb", "f.db")]


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_label_kind_survives_every_conversion(tmp_path, kind):
    src = _oc20_file(tmp_path / f"{kind}.lmdb", kind)
    with open_dataset(src) as reader:
        assert label_kind(reader) == EXPECTED[kind]
        meta = reader.metadata()
        assert (meta["energy_kind"], meta["labels_at_positions"]) == EXPECTED[kind]
    for fmt, name in [*TARGETS, ("aselmdb", "sharded"), ("hdf5", "f.h5"), ("oc20", "back.lmdb")]:
        out = tmp_path / name
        with open_dataset(src) as reader:
            write_dataset(out, reader, fmt, shards=2 if name == "sharded" else 1)
        with open_dataset(out) as back:
            assert label_kind(back) == EXPECTED[kind], fmt
            if fmt != "hdf5":  # hdf5.py (not this change) does not state it in metadata(); its records do
                meta = back.metadata()
                assert (meta["energy_kind"], meta["labels_at_positions"]) == EXPECTED[kind], fmt
    # OC20 output keeps an IS2RE energy under y_relaxed, where IS2RE loaders (and not S2EF ones) look
    env = lmdb.open(str(tmp_path / "back.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        fields = pickle.loads(txn.get(b"0")).to_dict()
    env.close()
    assert ("y" in fields, "y_relaxed" in fields) == ((False, True) if kind == "is2re" else (True, False))
    # and on through a second conversion: extxyz -> native -> aselmdb
    for a, b in [("f.extxyz", "again"), ("again", "again.aselmdb")]:
        with open_dataset(tmp_path / a) as reader:
            write_dataset(tmp_path / b, reader)
    with open_dataset(tmp_path / "again.aselmdb") as reader:
        assert label_kind(reader) == EXPECTED[kind]


def test_native_header_states_the_label_kind(tmp_path):
    write_dataset(tmp_path / "is2re", open_dataset(_oc20_file(tmp_path / "is2re.lmdb", "is2re")), shards=2)
    env = lmdb.open(str(tmp_path / "is2re" / "data.0001.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        header = json.loads(txn.get(b"__mlip_native__"))
    env.close()
    assert header["energy_kind"] == "adsorption" and header["labels_at_positions"] is False


def test_mixed_or_unstated_kinds_are_unknown(tmp_path):
    plain = random_structures(4, seed=7)
    for fmt, name in TARGETS:
        write_dataset(tmp_path / name, plain, fmt)
        assert label_kind(open_dataset(tmp_path / name)) == (None, True), fmt
    mixed = [s.replace(info={"energy_kind": kind}) for s, kind in zip(plain, ["total", "total", "adsorption", "total"])]
    for fmt, name in TARGETS:
        write_dataset(tmp_path / f"mixed-{name}", mixed, fmt)
        with open_dataset(tmp_path / f"mixed-{name}") as reader:
            if fmt in ("native", "aselmdb", "extxyz"):  # a header or every frame is consulted
                assert reader.metadata()["energy_kind"] is None, fmt
            assert reader[2].info["energy_kind"] == "adsorption"  # each record keeps its own statement


def test_generated_total_energies_say_so(tmp_path):
    result = mlip("data", "generate", tmp_path / "gen", "--kind", "molecule", "--n", "3")
    assert result.exit_code == 0, result.output
    assert label_kind(open_dataset(tmp_path / "gen")) == ("total", True)


# ---- 4. extxyz keeps info values and per-atom calculator results ------------------------------------------


def _tricky_info() -> dict:
    return {
        "reference_source": None,
        "one": np.array([1.5]),
        "one_int": np.array([3]),
        "empty": np.array([]),
        "looks_bool": "T",
        "looks_number": "1.5",
        "plain": "PBE",
        "scalar": 2.5,
        "vector": np.array([1.0, 2.0, 3.0]),
        "flag": False,
    }


def test_extxyz_output_keeps_info_values(tmp_path):
    s = Structure(
        numbers=[8, 1, 1],
        positions=[[0, 0, 0], [0.75, 0.5, 0], [-0.75, 0.5, 0]],
        energy=-1.5,
        info={**_tricky_info(), "magmoms": np.array([0.5, -0.25, 0.0]), "magmom": 0.25},
    )
    path = tmp_path / "out.extxyz"
    write_dataset(path, [s])
    atoms = ase_read(path, format="extxyz")  # the oracle: what ASE itself reads from our file
    info = atoms.info
    assert info["reference_source"] is None
    assert info["one"].shape == (1,) and info["one"][0] == 1.5 and info["one_int"].tolist() == [3]
    assert info["empty"].shape == (0,)
    assert info["looks_bool"] == "T" and info["looks_number"] == "1.5" and info["plain"] == "PBE"
    assert info["scalar"] == 2.5 and info["vector"].tolist() == [1, 2, 3] and info["flag"] is False
    np.testing.assert_array_equal(atoms.calc.results["magmoms"], [0.5, -0.25, 0.0])  # a per-atom column
    assert atoms.calc.results["magmom"] == 0.25 and atoms.get_potential_energy() == -1.5
    with open_dataset(path) as reader:
        assert_same_structure(s, reader[0])


def test_mptrj_style_magmoms_survive_conversions(tmp_path):
    """MPtrj/OMat-style rows written by ase-db-backends (magmoms on the calculator, reference_source=None and a
    one-element array in data) through native, extxyz, .db and aselmdb to extxyz: what ASE reads from the last
    file is what ASE reads from the first."""
    from ase.build import bulk

    src = tmp_path / "mptrj.aselmdb"
    db = ase_db.connect(str(src))
    for k in range(3):
        atoms = bulk("Fe", "bcc", a=2.875, cubic=True).repeat((1, 1, k + 1))
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=-8.0 - k,
            forces=np.full((len(atoms), 3), 0.125 * k),
            magmoms=2.0 + 0.25 * np.arange(len(atoms)),
            magmom=2.25 * len(atoms),
        )
        db.write(atoms, data={"mp_id": f"mp-{13 + k}", "reference_source": None, "corrected": np.array([-8.5])})
    db.close()
    chain = [src, tmp_path / "a", tmp_path / "b.extxyz", tmp_path / "c.db", tmp_path / "d.aselmdb"]
    chain.append(tmp_path / "back.extxyz")
    for a, b in zip(chain, chain[1:]):
        with open_dataset(a) as reader:
            write_dataset(b, reader)
    originals = list(ase_db.connect(str(src), readonly=True).select(sort="id"))
    last_aselmdb = list(ase_db.connect(str(chain[-2]), readonly=True).select(sort="id"))
    for row, again, back in zip(originals, last_aselmdb, ase_read(chain[-1], ":"), strict=True):
        assert back.info == {**row.data, "corrected": back.info["corrected"]}
        assert back.info["reference_source"] is None and back.info["corrected"].tolist() == [-8.5]
        expected = row.toatoms().calc.results
        for name in ("energy", "forces", "magmoms", "magmom"):
            np.testing.assert_array_equal(back.calc.results[name], expected[name], err_msg=name)
            np.testing.assert_array_equal(again.toatoms().calc.results[name], expected[name], err_msg=name)


# ---- 5. the native store refuses numbers no element has -----------------------------------------------------


def test_native_record_with_atomic_number_above_118(tmp_path):
    structures = [Structure(numbers=[6, 8], positions=[[0, 0, 0], [1.2, 0, 0]], energy=float(k)) for k in range(3)]
    write_dataset(tmp_path / "store", structures)
    shard = tmp_path / "store" / "data.0000.lmdb"
    env = lmdb.open(str(shard), subdir=False, lock=False)
    with env.begin(write=True) as txn:  # record 1: natoms 2, so numbers are the bytes after the float64 blocks
        key = (1).to_bytes(8, "big")
        value = bytearray(txn.get(key))
        numbers_at = 16 + 8 * (2 * 3 + 9 + 1)
        assert value[numbers_at : numbers_at + 2] == bytes([6, 8])
        value[numbers_at + 1] = 200
        txn.put(key, bytes(value))
    env.close()
    with NativeReader(tmp_path / "store") as reader:
        assert reader[0].numbers.tolist() == [6, 8] and reader[2].numbers.tolist() == [6, 8]
        with pytest.raises(DataError) as err:
            reader[1]
        message = str(err.value)
        assert message.startswith(f"{shard}: record 1: ") and "atomic number 200 (atom 1)" in message
        assert "\n" not in message
        problems, n_bad = validate(reader)
    assert n_bad == 1 and problems[0].index == 1
    # info shows the statistics stored at write time; a command that reads every record names the bad one
    result = mlip("data", "stats", tmp_path / "store", "--cutoff", "2.0")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "atomic number 200" in result.output and "data.0000.lmdb: record 1" in result.output
