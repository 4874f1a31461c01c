"""Native training store: exact round trips, shards, metadata, sniffing and corrupt records."""

from __future__ import annotations

import pickle

import lmdb
import numpy as np
import pytest
from datasets_testlib import assert_same_structure, random_structures

from mlip_datasets.errors import DataError
from mlip_datasets.formats import get_format
from mlip_datasets.formats.native import HEADER_KEY, NativeReader, decode, encode, sniff, write
from mlip_datasets.io import detect_format, open_dataset, write_dataset


def assert_same(a, b) -> None:
    assert_same_structure(a, b, exact_types=True)  # the native store promises bit-exact round trips


def test_encode_decode_exact_with_missing_labels():
    for s in random_structures(40, seed=1):
        assert_same(s, decode(encode(s)))


def test_decoded_arrays_are_writable(tmp_path):
    # the reader decodes from LMDB's own pages (buffers=True): the arrays must be copies, not read-only views
    original = random_structures(1, complete=True)[0]
    write(tmp_path / "s", [original])
    for s in (decode(encode(original)), NativeReader(tmp_path / "s")[0]):
        arrays = {name: value for name, value in vars(s).items() if isinstance(value, np.ndarray)}
        assert {"positions", "cell", "forces", "stress", "tags", "fixed"} <= arrays.keys()
        for name, value in arrays.items():
            assert value.flags.writeable, name
        s.positions[0, 0] += 1.0
        assert s.positions[0, 0] == original.positions[0, 0] + 1.0


@pytest.mark.parametrize("shards", [1, 3])
def test_directory_round_trip_and_natoms(tmp_path, shards):
    structures = random_structures(10)
    assert write(tmp_path / "store", structures, shards=shards) == 10
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [f"data.{k:04d}.lmdb" for k in range(shards)]
    with NativeReader(tmp_path / "store") as reader:
        assert len(reader) == 10 and reader.shards == shards
        for i, s in enumerate(structures):  # input order survives round-robin sharding
            assert_same(s, reader[i])
        assert reader.natoms_array().tolist() == [s.natoms for s in structures]
        assert reader.natoms(7) == structures[7].natoms
        assert_same(structures[-1], reader[-1])
        with pytest.raises(IndexError):
            reader[10]


def test_natoms_needs_no_record(tmp_path):
    write(tmp_path / "s", random_structures(6), shards=2)
    reader = NativeReader(tmp_path / "s")
    with lmdb.open(str(reader.files[0]), subdir=False, lock=False) as env, env.begin(write=True) as txn:
        txn.delete((0).to_bytes(8, "big"))
    assert reader.natoms(0) == random_structures(6)[0].natoms  # metadata only
    with pytest.raises(DataError, match="record 0: record is missing"):
        reader[0]


def test_single_file_when_lmdb_suffix_and_one_shard(tmp_path):
    structures = random_structures(5)
    write(tmp_path / "one.lmdb", structures)
    assert (tmp_path / "one.lmdb").is_file()
    assert not list(tmp_path.glob("*-lock"))
    assert [s.natoms for s in NativeReader(tmp_path / "one.lmdb")] == [s.natoms for s in structures]
    write(tmp_path / "many.lmdb", structures, shards=2)
    assert (tmp_path / "many.lmdb").is_dir() and len(NativeReader(tmp_path / "many.lmdb")) == 5


def test_stats_record(tmp_path):
    structures = random_structures(8)
    write(tmp_path / "s", structures, shards=2)
    stats = NativeReader(tmp_path / "s").stats()
    assert stats["n_structures"] == 8 and stats["n_atoms"] == sum(s.natoms for s in structures)
    write(tmp_path / "t", structures, stats=False)
    assert NativeReader(tmp_path / "t").stats() is None


def test_sniff(tmp_path):
    write(tmp_path / "dir", random_structures(2), shards=2)
    write(tmp_path / "file.lmdb", random_structures(2))
    assert sniff(tmp_path / "dir") and sniff(tmp_path / "file.lmdb")
    with lmdb.open(str(tmp_path / "other.lmdb"), subdir=False) as env, env.begin(write=True) as txn:
        txn.put(b"0", b"not ours")  # e.g. an OC20 shard
    (tmp_path / "text.lmdb").write_text("hello")
    (tmp_path / "empty").mkdir()
    for path in ("other.lmdb", "text.lmdb", "empty", "missing.lmdb"):
        assert not sniff(tmp_path / path), path


def test_write_dataset_atomic_and_open_by_name(tmp_path):
    structures = random_structures(4)
    assert write_dataset(tmp_path / "out", structures, fmt="native", shards=2) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporaries or lock files left
    reader = open_dataset(tmp_path / "out", fmt="native")
    assert reader.format_name == "native" and len(reader) == 4
    assert get_format("native").sniff(tmp_path / "out")


def test_detect_format(tmp_path):
    write(tmp_path / "d", random_structures(2), shards=2)
    write(tmp_path / "f.lmdb", random_structures(2))
    assert detect_format(tmp_path / "d").name == "native"
    assert detect_format(tmp_path / "f.lmdb").name == "native"


def _corrupt(reader: NativeReader, index: int, value: bytes) -> None:
    path = reader.files[index % reader.shards]
    with lmdb.open(str(path), subdir=False, lock=False) as env, env.begin(write=True) as txn:
        txn.put((index // reader.shards).to_bytes(8, "big"), value)


@pytest.mark.parametrize("damage", ["truncate", "flags", "natoms", "tail"])
def test_corrupt_record_names_shard_and_record(tmp_path, damage):
    structures = random_structures(6)
    structures[5] = structures[5].replace(sid=5, info={"a": 1})
    write(tmp_path / "s", structures, shards=2)
    reader = NativeReader(tmp_path / "s")
    good = encode(structures[5])
    head = np.frombuffer(good[:16], "<i8")
    value = {
        "truncate": good[:-5],
        "flags": np.array([head[0], 1 << 12], "<i8").tobytes() + good[16:],
        "natoms": np.array([head[0] + 1, head[1]], "<i8").tobytes() + good[16:],
        "tail": good[: good.index(b'{"sid"')] + b"\xff{not json",
    }[damage]
    _corrupt(reader, 5, value)
    with pytest.raises(DataError) as err:
        reader[5]
    assert err.value.record == 5
    assert "data.0001.lmdb" in str(err.value) and "record 5" in str(err.value)
    assert_same(structures[4], reader[4])  # neighbours still read


def test_missing_shard_is_reported(tmp_path):
    write(tmp_path / "s", random_structures(6), shards=3)
    (tmp_path / "s" / "data.0001.lmdb").unlink()
    with pytest.raises(DataError, match="shard"):
        NativeReader(tmp_path / "s")


def test_refuses_to_write_over_existing_store(tmp_path):
    write(tmp_path / "s", random_structures(2), shards=2)
    write(tmp_path / "f.lmdb", random_structures(2))
    for target in ("s", "f.lmdb"):
        with pytest.raises(DataError, match="already exists"):
            write(tmp_path / target, random_structures(3))
    assert len(NativeReader(tmp_path / "s")) == 2 and len(NativeReader(tmp_path / "f.lmdb")) == 2


def test_unstorable_record_is_reported(tmp_path):
    bad = random_structures(3)
    bad[2].numbers = np.full(bad[2].natoms, 300)  # Structure() refuses 300; set it past the check
    with pytest.raises(DataError, match="record 2: atomic number 300 .atom 0. is not an element"):
        write(tmp_path / "s", bad)


def test_reader_pickles_and_reopens(tmp_path):
    structures = random_structures(3)
    write(tmp_path / "s", structures, shards=2)
    reader = NativeReader(tmp_path / "s")
    reader[0]  # opens the environments in this process
    clone = pickle.loads(pickle.dumps(reader))
    assert_same(structures[1], clone[1])


def test_empty_store(tmp_path):
    assert write(tmp_path / "s", [], shards=2) == 0
    reader = NativeReader(tmp_path / "s")
    assert len(reader) == 0 and reader.natoms_array().shape == (0,)


def test_header_is_json_with_schema(tmp_path):
    import json

    write(tmp_path / "f.lmdb", random_structures(2))
    with lmdb.open(str(tmp_path / "f.lmdb"), subdir=False, readonly=True, lock=False) as env, env.begin() as txn:
        header = json.loads(txn.get(HEADER_KEY))
    assert header["schema"] == 1 and header["shards"] == 1 and header["count"] == 2
