"""Hostile OC20 LMDB records: tiny pickles that describe huge values are refused with bounded memory and time.

Each case is a few hundred bytes in a tiny LMDB; reading happens in a subprocess that reports its peak RSS.
"""

import collections
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
import torch_geometric.data as pyg
from datasets_testlib import mlip_subprocess, one_error_line, read_in_subprocess

from mlip_datasets import safe_pickle
from mlip_datasets.errors import DataError


def _put(path: Path, values: list[bytes], length: int | None = None) -> Path:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(str(i).encode(), value)
        txn.put(b"length", pickle.dumps(len(values) if length is None else length, protocol=-1))
    env.close()
    return path


def _fields(n: int = 3) -> dict:
    return {
        "pos": torch.arange(3 * n, dtype=torch.float32).view(n, 3) * 2.0,
        "cell": torch.eye(3).view(1, 3, 3) * 10,
        "atomic_numbers": torch.full((n,), 8.0),
        "natoms": n,
        "y": 1.5,
    }


def _record(**fields) -> bytes:
    return pickle.dumps(pyg.Data(**{**_fields(), **fields}), protocol=-1)


def _nested(levels: int) -> list:
    a: list = []
    for _ in range(levels):
        a = [a, a]  # pickle's memo writes each level once: a few bytes per level, 2**levels items
    return a


class _SharedStorageView:
    """Pickles as torch does a tensor, but every view names the SAME storage object (memoised by pickle)."""

    def __init__(self, storage, offset: int, size: int):
        self.args = (storage, offset, (size,), (1,), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


# ---- 1. shared nested lists ----------------------------------------------------------------------------


def test_nested_shared_lists_are_resolved_once_and_bounded(tmp_path):
    deep, shallow = pickle.dumps(_nested(40), protocol=4), pickle.dumps(_nested(20), protocol=4)
    assert len(deep) < 300 and len(shallow) < 200
    # 20 levels (2**20 items, 8 MiB of pointers) fits the budget; resolving keeps the sharing, no copies
    value = safe_pickle.loads(shallow)
    assert value[0] is value[1] and value[0][0] is value[1][1]
    with pytest.raises(DataError, match="expand to more than .* items through shared references") as err:
        safe_pickle.loads(deep, path="x.lmdb", record=b"0")
    assert "x.lmdb: record b'0'" in str(err.value) and "\n" not in str(err.value)
    # inside a Data record, as a field a consumer would walk (numpy.asarray of pos)
    path = _put(tmp_path / "nested.lmdb", [_record(pos=_nested(40)), _record(pos=_nested(20)), _record()])
    errors = read_in_subprocess(path)["errors"]
    assert len(errors) == 2, errors
    assert "record b'0'" in errors[0] and "shared references" in errors[0]
    assert "record b'1'" in errors[1] and "pos has shape" in errors[1]


def test_reference_cycle_is_refused():
    a: list = []
    a.append([a])
    with pytest.raises(DataError, match="reference cycle"):
        safe_pickle.loads(pickle.dumps(a, protocol=4))


# ---- 2. tensor views bigger than their storage ---------------------------------------------------------


def test_stride0_expanded_tensor_is_refused_with_bounded_memory(tmp_path):
    hostile = _record(force=torch.zeros(1).expand(10**8))  # 400 MB of float32 from one stored element
    assert len(hostile) < 2000
    path = _put(tmp_path / "expand.lmdb", [_record(), hostile, _record()])
    errors = read_in_subprocess(path)["errors"]
    assert len(errors) == 1 and "record b'1'" in errors[0] and "expand.lmdb" in errors[0]
    assert "tensor of shape (100000000,)" in errors[0] and "stride-0 view of 1 stored elements" in errors[0]
    assert "limit of 64 MiB" in errors[0]
    # through the CLI: validate reports the bad record (exit 1), convert refuses with one line (exit 2)
    out = mlip_subprocess("data", "validate", path)
    assert out.returncode == 1 and "stride-0 view" in out.stdout + out.stderr
    dst = tmp_path / "out.extxyz"
    out = mlip_subprocess("data", "convert", path, dst)
    assert out.returncode == 2 and "stride-0 view" in one_error_line(out)
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["expand.lmdb"]


def test_small_expanded_tensor_still_reads():
    record = _record(fixed=torch.zeros(1).expand(3), tags=torch.ones(1, dtype=torch.long).expand(3))
    fields = safe_pickle.loads(record).fields
    np.testing.assert_array_equal(fields["fixed"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(fields["tags"], np.ones(3, np.int64))


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_many_views_of_one_shared_storage_are_bounded_in_total(tmp_path):
    storage = torch.zeros(2**18).storage()  # 1 MiB stored once, then viewed 200 times: 200 MiB to copy
    views = {f"v{i}": _SharedStorageView(storage, i, 2**18 - i) for i in range(200)}
    hostile = pickle.dumps(pyg.Data(**_fields(), **views), protocol=-1)
    assert len(hostile) < 2**20 + 20000  # the storage bytes appear once
    with pytest.raises(DataError, match="would take the decoded record past its limit of 128 MiB"):
        safe_pickle.loads(hostile)
    path = _put(tmp_path / "views.lmdb", [hostile])
    errors = read_in_subprocess(path)["errors"]
    assert len(errors) == 1 and "record b'0'" in errors[0] and "past its limit" in errors[0]
    # a handful of such views is within budget and reads
    fine = pickle.dumps(pyg.Data(**_fields(), v=_SharedStorageView(storage, 1, 10)), protocol=-1)
    assert safe_pickle.loads(fine).fields["v"].shape == (10,)


# ---- 3. a length key the file cannot hold --------------------------------------------------------------


@pytest.mark.parametrize("length", [10**11, 4])
def test_impossible_length_key_is_refused_at_open(tmp_path, length):
    path = _put(tmp_path / "long.lmdb", [_record(), _record(), _record()], length=length)
    errors = read_in_subprocess(path)["errors"]
    expected = f"length key says {length} records but the file holds only 3 other entries"
    assert errors == [f"{path}: record b'length': {expected}"]
    for command in (["validate", path], ["split", path, "--out", tmp_path / "splits"]):
        out = mlip_subprocess("data", *command)
        assert out.returncode == 2 and expected in one_error_line(out), out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.lmdb"]


def test_length_key_up_to_the_entries_present_still_reads(tmp_path):
    path = _put(tmp_path / "ok.lmdb", [_record(), _record(), _record()], length=2)
    assert read_in_subprocess(path)["errors"] == []
