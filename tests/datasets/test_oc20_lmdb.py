"""OC20/OC22 legacy LMDB: real PyG pickles in, PyG-loadable pickles out, and nothing unsafe ever runs."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from datasets_testlib import FLOAT32, assert_same_structure, random_structures

from mlip_datasets.errors import DataError, UnsafePickleError
from mlip_datasets.formats import oc20_lmdb
from mlip_datasets.formats.oc20_lmdb import FORMAT, OC20Reader, sniff
from mlip_datasets.keys import LabelKeys
from mlip_datasets.lmdb_handles import references
from mlip_datasets.record import Structure


def _fields(i: int, n: int = 4) -> dict:
    """Attributes of an OC20 S2EF record with the released files' dtypes."""
    rng = np.random.default_rng(i)
    return {
        "pos": torch.tensor(rng.normal(size=(n, 3)) * 3, dtype=torch.float32),
        "cell": torch.tensor(np.diag([6.0, 7.0, 20.0]) + 0.1 * i, dtype=torch.float32).view(1, 3, 3),
        "atomic_numbers": torch.tensor(rng.integers(1, 80, n), dtype=torch.float32),
        "natoms": n,
        "tags": torch.tensor(rng.integers(0, 3, n), dtype=torch.long),
        "fixed": torch.tensor(rng.integers(0, 2, n), dtype=torch.float32),
        "sid": 1000 + i,
        "fid": torch.tensor(i),
        "y": float(rng.normal()),
        "force": torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32),
        "edge_index": torch.zeros((2, 5), dtype=torch.long),  # graph extras the reader ignores
    }


def _check(s: Structure, f: dict) -> None:
    np.testing.assert_array_equal(s.positions, f["pos"].numpy().astype(np.float64))
    np.testing.assert_array_equal(s.cell, f["cell"].numpy().reshape(3, 3))
    np.testing.assert_array_equal(s.numbers, f["atomic_numbers"].numpy().astype(int))
    np.testing.assert_array_equal(s.tags, f["tags"].numpy())
    np.testing.assert_array_equal(s.fixed, f["fixed"].numpy().astype(bool))
    np.testing.assert_array_equal(s.forces, f["force"].numpy())
    assert s.energy == f["y"] and s.sid == f["sid"] and s.fid == int(f["fid"])
    assert s.pbc.all() and s.natoms == f["natoms"]


def _put(path: Path, values: list[bytes], length: bool = True) -> Path:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(str(i).encode(), value)
        if length:
            txn.put(b"length", pickle.dumps(len(values), protocol=-1))
    env.close()
    return path


def _pyg_records(count: int) -> tuple[list[dict], list[bytes]]:
    import torch_geometric.data as data

    fields = [_fields(i) for i in range(count)]
    return fields, [pickle.dumps(data.Data(**f), protocol=-1) for f in fields]


@pytest.mark.parametrize("length", [True, False])
@pytest.mark.parametrize("shards", [1, 2])
def test_reads_real_pyg2_records(tmp_path, shards, length):
    fields, values = _pyg_records(5)
    if shards == 1:
        target = _put(tmp_path / "is2re.lmdb", values, length)
    else:
        target = tmp_path / "s2ef"
        target.mkdir()
        _put(target / "data.0000.lmdb", values[:3], length)
        _put(target / "data.0001.lmdb", values[3:], length)
    assert sniff(target)
    with OC20Reader(target) as reader:
        assert len(reader) == 5
        for i in range(5):
            _check(reader[i], fields[i])
        _check(reader[-1], fields[4])
        assert reader.metadata()["pickle_layout"].startswith("PyG 2")
        assert reader.metadata()["energy_kind"] == "adsorption"
        assert reader.natoms(3) == 4
        with pytest.raises(IndexError):
            reader[5]
    if shards == 2:
        assert OC20Reader(target).record_name(4) == "data.0001.lmdb key 1"


def _stand_in_pyg(monkeypatch, data_cls) -> types.ModuleType:
    """Put ``data_cls`` in sys.modules as ``torch_geometric.data.Data``, stubbing its parent packages if PyG is not
    imported yet: pickle imports ``torch_geometric.data.data``, which would otherwise start a real PyG import that
    trips over the stand-in and leaves a half-initialised ``torch_geometric`` behind for later tests."""
    for name in ("torch_geometric", "torch_geometric.data"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = types.ModuleType("torch_geometric.data.data")
    module.Data = data_cls
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_reads_pyg1_layout(tmp_path, monkeypatch, protocol):
    # PyG 1.x Data had no _store: default object pickling of its __dict__. Pickle a plain class under PyG's name.
    class Data:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    Data.__module__, Data.__qualname__ = "torch_geometric.data.data", "Data"
    fake = _stand_in_pyg(monkeypatch, Data)
    fields = [{**_fields(i), "x": None, "__num_nodes__": None} for i in range(3)]
    values = [pickle.dumps(Data(**f), protocol=protocol) for f in fields]
    assert b"_store" not in values[0]
    monkeypatch.delitem(sys.modules, fake.__name__)
    with OC20Reader(_put(tmp_path / "old.lmdb", values)) as reader:
        for i in range(3):
            _check(reader[i], fields[i])
        assert reader.metadata()["pickle_layout"].startswith("PyG 1")


def test_legacy_is2re_fields(tmp_path):
    f = _fields(0)
    del f["y"], f["force"]
    f.update(y_init=1.5, y_relaxed=-0.75, pos_relaxed=f["pos"] + 0.5)
    values = [oc20_lmdb.encode_data({k: v.numpy() if hasattr(v, "numpy") else v for k, v in f.items()}, "pyg1")]
    reader = OC20Reader(_put(tmp_path / "is2re.lmdb", values, length=False))
    s = reader[0]
    assert s.energy == -0.75 and s.forces is None and s.info["energy_key"] == "y_relaxed"
    assert s.info["y_init"] == 1.5 and s.info["y_relaxed"] == -0.75
    np.testing.assert_allclose(s.info["pos_relaxed"], s.positions + 0.5, atol=1e-6)
    # y_relaxed is the relaxed structure's energy: not a label of the stored (initial) positions
    assert reader.metadata()["energy_kind"] == "adsorption" and reader.metadata()["labels_at_positions"] is False
    assert s.info["labels_at_positions"] is False and s.info["energy_kind"] == "adsorption"
    # the user's key wins over the legacy mapping, and then the energy kind is not claimed
    custom = OC20Reader(reader.path, LabelKeys(energy="y_init"))
    assert custom[0].energy == 1.5 and custom.metadata()["energy_kind"] is None
    assert custom.metadata()["labels_at_positions"] is True and "energy_kind" not in custom[0].info


class _Evil:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class _EvilEval(_Evil):
    def __reduce__(self):
        return (eval, (f"open({str(self.sentinel)!r}, 'w')",))


@pytest.mark.parametrize("evil", [_Evil, _EvilEval])
@pytest.mark.parametrize("where", ["top", "inside_data"])
def test_refuses_code_execution(tmp_path, evil, where):
    sentinel = tmp_path / "SENTINEL"
    payload = evil(sentinel)
    if where == "inside_data":
        import torch_geometric.data as data

        payload = data.Data(pos=torch.zeros(1, 3), atomic_numbers=torch.ones(1), evil=payload)
    path = _put(tmp_path / "evil.lmdb", [pickle.dumps(payload, protocol=-1)])
    with pytest.raises(UnsafePickleError) as err:
        OC20Reader(path)[0]
    assert ("posix.system" in str(err.value) or "builtins.eval" in str(err.value)) and "record b'0'" in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not sentinel.exists()


def test_refuses_code_inside_tensor_bytes(tmp_path):
    # the storage of a tensor is itself a pickle (legacy torch.save): it gets the same treatment
    raw = pickle.dumps(torch.zeros(3), protocol=-1)
    evil = raw.replace(b"ctorch\nFloatStorage\n", b"N0N0N0cposix\nsystem\n")
    assert evil != raw and len(evil) == len(raw)
    with pytest.raises(UnsafePickleError, match="posix.system"):
        OC20Reader(_put(tmp_path / "evil.lmdb", [evil]))[0]


def test_rejects_out_of_bounds_tensor(tmp_path):
    from mlip_datasets.formats import _pyg_pickle as g

    storage = g._tensor(np.zeros(3, np.float32)).args[0]
    bad = g._Reduce(g._REBUILD, (storage, 0, (1000,), (1,), False, g._Reduce(g._ORDERED_DICT, ())))
    value = g.encode_data({"pos": np.zeros((1, 3), np.float32), "atomic_numbers": bad})
    with pytest.raises(DataError, match="corrupt record"):
        OC20Reader(_put(tmp_path / "bad.lmdb", [value]))[0]


def test_reads_without_torch_geometric_or_torch(tmp_path):
    fields, values = _pyg_records(2)
    path = _put(tmp_path / "x.lmdb", values)
    script = (
        "import sys, json\n"
        "sys.modules['torch_geometric'] = None; sys.modules['torch'] = None\n"
        "from mlip_datasets.formats.oc20_lmdb import OC20Reader\n"
        f"r = OC20Reader({str(path)!r})\n"
        "print(json.dumps([[s.energy, s.positions.tolist(), s.forces.tolist(), s.sid] for s in r]))\n"
        "assert not any(m.startswith(('torch', 'torch_geometric')) and sys.modules[m] for m in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    got = json.loads(out.stdout)
    for (energy, pos, force, sid), f in zip(got, fields):
        assert energy == f["y"] and sid == f["sid"]
        np.testing.assert_array_equal(pos, f["pos"].numpy())
        np.testing.assert_array_equal(force, f["force"].numpy())


def _structures(count: int) -> list[Structure]:
    """Records with every label, sids of one type (PyG batches them), and IS2RE/OC22 facts in ``info``."""
    rng = np.random.default_rng(7)
    return [
        s.replace(sid=f"random{i}", info={"y_init": 0.25 * i, "pos_relaxed": rng.normal(size=(s.natoms, 3)), "oc22": 1})
        for i, s in enumerate(random_structures(count, seed=7, complete=True))
    ]


def test_written_records_load_with_pyg(tmp_path):
    import torch_geometric.data as tg

    structures = _structures(3)
    assert FORMAT.write(tmp_path / "w.lmdb", structures) == 3
    env = lmdb.open(str(tmp_path / "w.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:  # what fairchem's LmdbDataset does
        assert pickle.loads(txn.get(b"length")) == 3
        data = [pickle.loads(txn.get(str(i).encode())) for i in range(3)]
    env.close()
    for d, s in zip(data, structures):
        assert isinstance(d, tg.Data) and d.natoms == s.natoms and d.sid == s.sid and d.fid == s.fid
        assert d.pos.dtype == torch.float32 and d.atomic_numbers.dtype == torch.float32
        assert d.tags.dtype == torch.long and d.cell.shape == (1, 3, 3) and d.y == s.energy
        np.testing.assert_allclose(d.pos.numpy(), s.positions, rtol=1e-6)
        np.testing.assert_allclose(d.force.numpy(), s.forces, rtol=1e-6)
        np.testing.assert_array_equal(d.atomic_numbers.numpy(), s.numbers)
        np.testing.assert_array_equal(d.fixed.numpy(), s.fixed)
    batch = tg.Batch.from_data_list(data)
    assert batch.pos.shape == (sum(s.natoms for s in structures), 3) and batch.y.shape == (3,)


@pytest.mark.parametrize("legacy_names", [True, False])
@pytest.mark.parametrize("shards", [1, 3])
def test_round_trip(tmp_path, shards, legacy_names):
    structures = _structures(5)
    target = tmp_path / "out.lmdb"
    assert FORMAT.write(target, structures, shards=shards, legacy_names=legacy_names) == 5
    assert target.is_dir() == (shards > 1) and sniff(target)
    assert not list(tmp_path.rglob("*-lock"))
    with OC20Reader(target) as reader:
        assert len(reader) == 5
        assert reader.metadata()["energy_kind"] == "oc22_total"  # the oc22 flag came along in info
        for s, r in zip(structures, reader):
            assert_same_structure(s, r, tolerance=FLOAT32, info=False)
            np.testing.assert_allclose(r.info["pos_relaxed"], s.info["pos_relaxed"], rtol=1e-6, atol=1e-6)
            assert r.info["y_init"] == s.info["y_init"] and r.info["oc22"] == 1


def test_write_dataset_and_partial_pbc(tmp_path):
    from mlip_datasets.io import open_dataset, write_dataset

    s = Structure(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.74]], cell=np.eye(3) * 10, pbc=[True, True, False])
    assert write_dataset(tmp_path / "h2.lmdb", [s, s.replace(pbc=False, cell=np.zeros((3, 3)))], fmt="oc20") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h2.lmdb"]  # atomic: no temp or lock files left
    reader = open_dataset(tmp_path / "h2.lmdb", fmt="oc20")
    assert reader[0].pbc.tolist() == [True, True, False] and not reader[1].pbc.any()
    assert reader[0].energy is None and reader.metadata()["energy_kind"] is None


def test_errors_name_file_and_record(tmp_path):
    good = oc20_lmdb.encode_data({"pos": np.zeros((2, 3), np.float32), "atomic_numbers": np.ones(2, np.float32)})
    no_pos = oc20_lmdb.encode_data({"atomic_numbers": np.ones(2, np.float32)})
    bad_forces = oc20_lmdb.encode_data(
        {
            "pos": np.zeros((2, 3), np.float32),
            "atomic_numbers": np.ones(2, np.float32),
            "force": np.zeros((3, 3), np.float32),
        }
    )
    path = _put(tmp_path / "mixed.lmdb", [good, good[: len(good) // 2], no_pos, bad_forces, b"not a pickle"])
    reader = OC20Reader(path)
    assert reader[0].natoms == 2
    for index, pattern in [
        (1, "corrupt record"),
        (2, "'pos' is missing"),
        (3, r"force has shape \(3, 3\)"),
        (4, "corrupt record"),
    ]:
        with pytest.raises(DataError, match=pattern) as err:
            reader[index]
        assert str(err.value).startswith(f"{path}: record b'{index}': ") and "\n" not in str(err.value)

    text = tmp_path / "notes.lmdb"
    text.write_text("hello, not an LMDB file\n" * 100)
    assert not sniff(text)
    with pytest.raises(DataError, match="not a readable LMDB") as err:
        OC20Reader(text)
    assert str(text) in str(err.value)
    with pytest.raises(DataError, match="cannot write as OC20"):
        oc20_lmdb.write(
            tmp_path / "w.lmdb", [Structure(numbers=[1, 1], positions=np.zeros((2, 3)), forces=np.zeros((3, 3)))]
        )


def test_sniff_tells_formats_apart(tmp_path):
    native = _put(tmp_path / "native.lmdb", [b"\x00" * 8])
    env = lmdb.open(str(native), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"__mlip_native__", b"{}")
    env.close()
    assert not sniff(native)
    ase_like = _put(tmp_path / "ase.lmdb", [b"x\x9c..."])  # zlib JSON values, reserved nextid key
    assert not sniff(ase_like)
    oc20 = _put(tmp_path / "oc20.lmdb", [pickle.dumps({"pos": 1}, protocol=2)])
    assert sniff(oc20) and not sniff(tmp_path / "missing.lmdb") and not sniff(tmp_path / "empty_dir")
    directory = tmp_path / "shards"
    directory.mkdir()
    _put(directory / "data.0000.lmdb", [pickle.dumps(1, protocol=4)])
    assert sniff(directory)
    # while a reader holds the file open (py-lmdb refuses a second open of it), sniff and a second reader share
    # the reader's handle: both work, and sniff gives its reference back
    one = _put(
        tmp_path / "one.lmdb",
        [oc20_lmdb.encode_data({"pos": np.zeros((1, 3), np.float32), "atomic_numbers": np.ones(1, np.float32)})],
    )
    with OC20Reader(one) as reader:
        assert reader[0].natoms == 1 and references(one) == 1
        assert sniff(one) and references(one) == 1
        with OC20Reader(one) as second:
            assert second[0].natoms == 1 and references(one) == 2
    assert references(one) == 0


def test_energy_kind_metadata(tmp_path):
    def kind(**extra):
        value = oc20_lmdb.encode_data({"pos": np.zeros((1, 3), np.float32), "atomic_numbers": np.ones(1), **extra})
        path = _put(tmp_path / f"k{len(list(tmp_path.iterdir()))}.lmdb", [value])
        return OC20Reader(path).metadata()["energy_kind"]

    assert kind(y=1.0) == "adsorption"
    assert kind(y=1.0, oc22=1) == "oc22_total"
    assert kind(y=1.0, oc22=0) is None
    assert kind(energy=1.0) == "total"
    assert kind(y=1.0, energy_kind="total") == "total"
    assert kind(y=1.0, oc22=1, energy_kind="oc22_total") == "oc22_total"
    assert kind() is None


def test_metadata_npz_natoms(tmp_path):
    target = tmp_path / "s2ef"
    structures = _structures(4)
    oc20_lmdb.write(target, structures, shards=2)
    np.savez(target / "metadata.npz", natoms=np.array([30, 31, 32, 33]))
    reader = OC20Reader(target)
    assert reader.natoms(2) == 32 and reader.metadata()["natoms_source"] == "metadata.npz"
    np.savez(target / "metadata.npz", natoms=np.array([1, 2]))  # wrong length: belongs elsewhere, ignored
    assert OC20Reader(target).natoms(2) == structures[2].natoms


def _child_read(reader, queue):
    queue.put([reader[i].sid for i in range(len(reader))])


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_reader_after_fork_and_pickle(tmp_path):
    target = tmp_path / "s2ef"
    oc20_lmdb.write(target, _structures(4), shards=2)
    reader = OC20Reader(target)
    expected = [reader[i].sid for i in range(4)]  # opens the environments in the parent first
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(reader, queue))
    child.start()
    assert queue.get(timeout=60) == expected
    child.join(60)
    assert child.exitcode == 0
    clone = pickle.loads(pickle.dumps(reader))  # spawn-style workers get a copy without handles
    assert [clone[i].sid for i in range(4)] == expected


class _FieldsOnFloatDtype:
    # numpy's own dtype.__setstate__ accepts a field far past the item size: an out-of-bounds read later
    def __reduce__(self):
        return (np.dtype, ("f8", False, True), (3, "<", None, ("a",), {"a": (np.dtype("f8"), 1000)}, 8, 1, 0))


def test_safe_pickle_hardening():
    from mlip_datasets import safe_pickle

    plain = {"a": np.arange(6.0).reshape(2, 3).T, "b": np.float32(2.5), "c": np.array(["x", "yz"]), "d": {1, 2}}
    for protocol in (2, 4, 5):
        got = safe_pickle.loads(pickle.dumps(plain, protocol=protocol))
        np.testing.assert_array_equal(got["a"], plain["a"])
        assert got["b"] == np.float32(2.5) and got["c"].tolist() == ["x", "yz"] and got["d"] == {1, 2}
    with pytest.raises(DataError, match="fields"):
        safe_pickle.loads(pickle.dumps(_FieldsOnFloatDtype(), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"numpy.dtype\('V8'\)"):
        safe_pickle.loads(pickle.dumps(np.zeros(2, dtype=[("a", "<f8")])))
    # BUILD on an allowed callable (to patch it for later records) is refused, and the allow-list still works
    patch = b"\x80\x02cnumpy\ndtype\nN}X\x03\x00\x00\x00_fnNs\x86b."
    with pytest.raises(DataError, match="corrupt record"):
        safe_pickle.loads(patch, path="p", record=b"3")
    assert safe_pickle.loads(pickle.dumps(np.float64(1.5))) == 1.5


def test_tensor_pickles_of_every_kind():
    from mlip_datasets import safe_pickle

    base = torch.arange(24.0).reshape(4, 6)
    tagged = torch.ones(3)
    tagged.note = "python attribute"  # pickles through _rebuild_from_type_v2
    tensors = [
        base,
        base.T,
        base[1:3, ::2],
        base.to(torch.bfloat16),
        base.half(),
        base.double(),
        base.long()[2],
        torch.tensor(True),
        torch.zeros(0, 3),
        torch.tensor(7),
        torch.nn.Parameter(torch.ones(2)),
        tagged,
        torch.tensor([1, -2], dtype=torch.int8),
        torch.tensor([3], dtype=torch.uint8),
        torch.tensor([1 + 2j]),
    ]
    for t in tensors:
        expected = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
        for protocol in (0, 2, 5):
            got = safe_pickle.loads(pickle.dumps(t, protocol=protocol))
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)


def test_encoder_dtypes_load_in_torch(monkeypatch):
    arrays = {
        name: np.arange(6).reshape(2, 3).astype(dtype)
        for name, dtype in [
            ("f4", np.float32),
            ("f8", np.float64),
            ("f2", np.float16),
            ("i8", np.int64),
            ("i4", np.int32),
            ("i2", np.int16),
            ("i1", np.int8),
            ("u1", np.uint8),
            ("b", bool),
            ("c8", np.complex64),
        ]
    }
    raw = oc20_lmdb.encode_data(arrays, layout="pyg1")

    class Data:  # stands in for PyG 1.x, so that plain pickle with real torch rebuilds every tensor
        def __setstate__(self, state):
            self.__dict__.update(state)

    _stand_in_pyg(monkeypatch, Data)
    loaded = pickle.loads(raw)
    for name, array in arrays.items():
        tensor = loaded.__dict__[name]
        assert isinstance(tensor, torch.Tensor) and tensor.numpy().dtype == array.dtype
        np.testing.assert_array_equal(tensor.numpy(), array)
