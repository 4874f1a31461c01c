"""Hostile ``.aselmdb`` files: tiny files that describe huge values are refused (or read) with bounded memory.

Each file is a few rows written by our writer with LMDB values patched afterwards; reading happens in a fresh
process that reports its peak RSS, and the CLI must answer with one line, no traceback.
"""

import json
import zlib
from pathlib import Path

import ase.db as ase_db
import ase_db_backends  # noqa: F401 - the oracle: ase.db.connect finds the .aselmdb backend through it
import numpy as np
import pytest
from datasets_testlib import mlip_subprocess, one_error_line, put_aselmdb_values, read_in_subprocess

from mlip_datasets import DataError, Structure
from mlip_datasets.formats import get_format
from mlip_datasets.formats.aselmdb import AseLmdbReader
from mlip_datasets.safe_pickle import RECORD_ALLOWANCE, RECORD_FACTOR

FMT = get_format("aselmdb")
GOOD = {"numbers": [8, 1], "positions": [[0, 0, 0], [0, 0, 1]]}


def _file(path: Path, n: int = 3) -> Path:
    structures = [Structure(numbers=[8, 1], positions=np.eye(2, 3) * (i + 1), energy=float(i)) for i in range(n)]
    FMT.write(path, structures)
    return path


def _validate_and_convert_refuse(tmp_path: Path, path: Path, expected: str) -> None:
    """validate reports the bad row (exit 1); convert refuses with one line (exit 2) and writes nothing."""
    before = sorted(p.name for p in tmp_path.iterdir())
    out = mlip_subprocess("data", "validate", path)
    assert out.returncode == 1 and expected in out.stdout + out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    dst = tmp_path / "out.extxyz"
    out = mlip_subprocess("data", "convert", path, dst)
    line = one_error_line(out)
    assert out.returncode == 2 and expected in line and path.name in line and "record 2" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---- 1. nextid far beyond the keys present --------------------------------------------------------------


@pytest.mark.parametrize("deleted", [[5], None])
def test_huge_nextid_is_bounded_by_the_keys_present(tmp_path, deleted):
    extra = {} if deleted is None else {"deleted_ids": deleted}
    path = put_aselmdb_values(_file(tmp_path / "big.aselmdb"), {"nextid": 10**12, **extra})
    assert path.stat().st_size < 200_000
    result = read_in_subprocess(path)
    assert result["len"] == 3 and result["errors"] == [], result  # the three rows the file really holds
    out = mlip_subprocess("data", "validate", path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr


def test_nextid_too_large_for_int64_is_scanned(tmp_path):
    path = put_aselmdb_values(_file(tmp_path / "huge.aselmdb"), {"nextid": 10**30, "deleted_ids": [2]})
    assert len(AseLmdbReader(path)) == 3


def test_deletions_written_by_ase_db_backends_still_read(tmp_path):
    path = tmp_path / "theirs.aselmdb"
    _file(path, 5)
    db = ase_db.connect(str(path))
    db.delete([2, 4])
    db.close()
    reader = AseLmdbReader(path)
    assert len(reader) == 3 and [reader.record_name(i) for i in range(3)] == [
        f"theirs.aselmdb id {i}" for i in (1, 3, 5)
    ]
    assert [s.energy for s in reader] == [0.0, 2.0, 4.0]


def test_a_few_missing_rows_are_still_reported_as_missing(tmp_path):
    path = put_aselmdb_values(_file(tmp_path / "gap.aselmdb", 2), {"nextid": 5})
    reader = AseLmdbReader(path)
    assert len(reader) == 4
    with pytest.raises(DataError, match="record 3: row is listed as live"):
        reader[2]


# ---- 2. arrays whose dtype/shape promise more than is there ---------------------------------------------


@pytest.mark.parametrize(
    "array, expected",
    [
        ([[1], "S400000000", ["a"]], "array of dtype |S400000000 and shape (1,) needs 400000000 bytes"),
        ([[1], "(100000000,)f8", [1.0]], "needs 800000000 bytes"),
        ([[10**9, 3], "float64", [1.0, 2.0, 3.0]], "array declares shape (1000000000, 3) but holds 3 values"),
        ([[-1], "float64", [1.0]], "array has an invalid shape [-1]"),
        ([[1], "no-such-type", [1.0]], "array has an unknown dtype"),
    ],
)
def test_array_dtype_and_shape_are_checked_before_allocating(tmp_path, array, expected):
    path = put_aselmdb_values(_file(tmp_path / "arr.aselmdb"), {2: {**GOOD, "data": {"x": {"__ndarray__": array}}}})
    assert path.stat().st_size < 200_000
    result = read_in_subprocess(path)
    assert len(result["errors"]) == 1, result
    error = result["errors"][0]
    assert error.startswith(f"{path}: record 2: ") and expected in error and "\n" not in error, error
    _validate_and_convert_refuse(tmp_path, path, expected)


def test_ordinary_arrays_still_read(tmp_path):
    data = {
        "s": {"__ndarray__": [[2], "S10", ["ab", "c"]]},
        "z": {"__ndarray__": [[2], "complex128", [1.0, 2.0, 3.0, 4.0]]},
        "e": {"__ndarray__": [[0, 3], "float64", []]},
    }
    path = put_aselmdb_values(_file(tmp_path / "ok.aselmdb"), {2: {**GOOD, "data": data}})
    info = AseLmdbReader(path)[1].info
    assert info["s"].tolist() == [b"ab", b"c"] and info["s"].dtype == np.dtype("S10")
    assert info["z"].tolist() == [1 + 2j, 3 + 4j] and info["e"].shape == (0, 3)


# ---- 3. zlib bombs --------------------------------------------------------------------------------------


def _bomb(inflated_mib: int) -> bytes:
    z = zlib.compressobj(9)
    parts = [z.compress(json.dumps(GOOD)[:-1].encode() + b', "pad": "')]
    chunk = b" " * (1 << 20)
    parts += [z.compress(chunk) for _ in range(inflated_mib)]
    parts.append(z.compress(b'"}') + z.flush())
    return b"".join(parts)


def test_zlib_bomb_is_refused_with_bounded_memory(tmp_path):
    bomb = _bomb(200)  # 200 MiB of JSON from a few hundred KB
    assert len(bomb) < 400_000
    path = put_aselmdb_values(_file(tmp_path / "bomb.aselmdb"), {2: bomb})
    limit = RECORD_ALLOWANCE + RECORD_FACTOR * len(bomb)
    expected = f"value inflates to more than {limit} bytes"
    result = read_in_subprocess(path)
    assert len(result["errors"]) == 1 and expected in result["errors"][0], result
    assert result["errors"][0].startswith(f"{path}: record 2: ")
    _validate_and_convert_refuse(tmp_path, path, expected)


def test_value_just_under_the_inflate_limit_reads(tmp_path):
    path = put_aselmdb_values(_file(tmp_path / "pad.aselmdb"), {2: _bomb(8)})
    assert AseLmdbReader(path)[1].natoms == 2


def test_bomb_in_nextid_is_refused_at_open(tmp_path):
    z = zlib.compressobj(9)
    bomb = z.compress(b"2" + b" " * (100 << 20)) + z.flush()
    path = put_aselmdb_values(_file(tmp_path / "nb.aselmdb"), {"nextid": bomb})
    result = read_in_subprocess(path)
    assert len(result["errors"]) == 1 and "record nextid: value inflates to more than" in result["errors"][0]


# ---- 4. what Structure refuses also names file and record ------------------------------------------------


def test_bad_atomic_number_names_file_and_record(tmp_path):
    path = put_aselmdb_values(_file(tmp_path / "z.aselmdb"), {2: {**GOOD, "numbers": [8, 500]}})
    with pytest.raises(DataError) as err:
        AseLmdbReader(path)[1]
    assert str(err.value).startswith(f"{path}: record 2: atomic number 500 (atom 1) is not an element")
    _validate_and_convert_refuse(tmp_path, path, "atomic number 500")
