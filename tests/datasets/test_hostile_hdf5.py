"""Hostile mlip-hdf5 files: a good file written by our writer, then corrupted with h5py.

Corrupt offsets, a non-numeric version, huge declared sizes and out-of-range atomic numbers are refused with one
line naming the file (and the record where there is one), no traceback, and bounded memory.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from datasets_testlib import SECONDS, mlip_subprocess, one_error_line, random_structures, read_in_subprocess

from mlip_datasets import DataError, LabelKeys
from mlip_datasets.formats import get_format
from mlip_datasets.formats.hdf5 import write

HDF5 = get_format("hdf5")


def _good(path: Path, n: int = 3) -> Path:
    write(path, random_structures(n, seed=1, complete=True))
    return path


def _natoms(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["natoms"][:]


def _replace(f, name: str, **kwargs) -> None:
    del f[name]
    f.create_dataset(name, **kwargs)


def _refused(path: Path, *needles: str) -> None:
    """``mlip data info`` and ``mlip data validate`` both exit 2 with one line naming the file and ``needles``."""
    before = path.read_bytes()
    for command in ("info", "validate"):
        out = mlip_subprocess("data", command, path)
        line = one_error_line(out)
        assert out.returncode == 2, out.stderr + out.stdout
        assert line.startswith("mlip: error:") and path.name in line, line
        for needle in needles:
            assert needle in line, line
    assert path.read_bytes() == before  # reading never writes


# ---- 1. offsets -------------------------------------------------------------------------------------------


def _set_offsets(path: Path, change) -> None:
    with h5py.File(path, "a") as f:
        offsets = f["offsets"][:]
        change(offsets)
        f["offsets"][:] = offsets


def test_offsets_that_give_a_record_more_atoms_than_its_natoms_are_refused(tmp_path):
    path = _good(tmp_path / "wide.h5")
    natoms = _natoms(path)
    # record 0 swallows record 1's atoms: still non-decreasing and ending at the atom count
    _set_offsets(path, lambda o: o.__setitem__(1, natoms[0] + natoms[1]))
    with pytest.raises(DataError) as err:
        HDF5.open(path, LabelKeys())
    message = str(err.value)
    assert "wide.h5" in message and "record 0" in message
    assert f"natoms says {natoms[0]} atoms but offsets give {natoms[0] + natoms[1]}" in message
    _refused(path, "record 0", "natoms says")


@pytest.mark.parametrize(
    "change, needles",
    [
        (lambda o: o.__setitem__(0, 1), ("record 0", "offsets start at 1, not 0")),
        (lambda o: o.__setitem__(2, 0), ("record 1", "offsets decrease")),
        (lambda o: o.__setitem__(-1, o[-1] + 5), ("offsets/natoms do not match the length of 'numbers'",)),
    ],
    ids=["start", "decrease", "end"],
)
def test_inconsistent_offsets_are_refused_with_one_line(tmp_path, change, needles):
    path = _good(tmp_path / "offsets.h5")
    _set_offsets(path, change)
    _refused(path, *needles)


def test_offsets_of_the_wrong_length_are_refused(tmp_path):
    path = _good(tmp_path / "short.h5")
    with h5py.File(path, "a") as f:
        offsets = f["offsets"][:-1]
        _replace(f, "offsets", data=offsets)
    _refused(path, "'offsets' has shape (3,)")


def test_negative_natoms_without_offsets_is_refused(tmp_path):
    path = _good(tmp_path / "neg.h5")
    with h5py.File(path, "a") as f:
        del f["offsets"]
        f["natoms"][1] = -4
    _refused(path, "record 1", "natoms is -4")


# ---- 2. version and huge declared sizes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "version", ["abc", 1.5, np.inf, np.array([1, 2])], ids=["text", "fraction", "infinite", "array"]
)
def test_non_numeric_version_is_refused(tmp_path, version):
    path = _good(tmp_path / "version.h5")
    with h5py.File(path, "a") as f:
        f.attrs["version"] = version
    _refused(path, "'version' attribute is", "not an integer")


def test_a_huge_natoms_value_is_refused(tmp_path):
    path = _good(tmp_path / "huge_natoms.h5")
    with h5py.File(path, "a") as f:
        f["natoms"][2] = 10**15
    _refused(path, "record 2", "natoms is 1000000000000000")


def _huge_numbers(path: Path) -> Path:
    """Atoms declared by the hundred billion (offsets and natoms agreeing), in a file of a few kilobytes."""
    atoms = 10**11
    with h5py.File(path, "a") as f:
        _replace(f, "numbers", shape=(atoms,), dtype=np.int64, chunks=(1024,), maxshape=(None,))
        _replace(f, "positions", shape=(atoms, 3), dtype=np.float64, chunks=(1024, 3), maxshape=(None, 3))
        natoms = np.array([atoms - 2, 1, 1], dtype=np.int64)
        f["natoms"][:] = natoms
        f["offsets"][:] = np.concatenate([[0], np.cumsum(natoms)])
    return path


def _huge_index(path: Path) -> Path:
    """A 'natoms' declared with ten billion entries (80 GB), never written."""
    with h5py.File(path, "a") as f:
        _replace(f, "natoms", shape=(10**10,), dtype=np.int64, chunks=(1024,), maxshape=(None,))
    return path


@pytest.mark.parametrize(
    "corrupt, needle",
    [(_huge_numbers, "'numbers' declares shape (100000000000,)"), (_huge_index, "'natoms' declares shape")],
    ids=["atoms", "structures"],
)
def test_huge_declared_shapes_are_refused_with_bounded_memory(tmp_path, corrupt, needle):
    path = corrupt(_good(tmp_path / "huge.h5"))
    assert path.stat().st_size < 1_000_000
    errors = read_in_subprocess(path)["errors"]
    assert len(errors) == 1 and "huge.h5" in errors[0] and needle in errors[0], errors
    _refused(path, needle)


def test_a_mask_or_label_of_the_wrong_length_is_refused(tmp_path):
    path = _good(tmp_path / "label.h5")
    with h5py.File(path, "a") as f:
        _replace(f, "energy", data=np.zeros(2))
    _refused(path, "'energy' has shape (2,)")


# ---- 3. atomic numbers out of range get file and record ---------------------------------------------------


def test_atomic_number_error_names_file_and_record(tmp_path):
    path = _good(tmp_path / "z.h5")
    with h5py.File(path, "a") as f:
        offsets = f["offsets"][:]
        f["numbers"][offsets[1] + 1] = 200
    reader = HDF5.open(path, LabelKeys())
    reader[0]
    with pytest.raises(DataError) as err:
        reader[1]
    assert str(err.value).startswith(f"{path}: record 1: atomic number 200 (atom 1)"), str(err.value)
    assert type(err.value).__name__ == "AtomicNumberError" and isinstance(err.value, ValueError)
    out = mlip_subprocess("data", "validate", path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr + out.stdout
    bad = [line for line in out.stdout.splitlines() if line.startswith("bad ")]
    assert bad == ["bad z.h5 #1: atomic number 200 (atom 1) is not an element (allowed 1..118, 0 = dummy)"], out.stdout


def test_the_good_file_still_reads(tmp_path):
    path = _good(tmp_path / "good.h5", n=5)
    reader = HDF5.open(path, LabelKeys())
    assert len(reader) == 5 and [reader[i].natoms for i in range(5)] == list(_natoms(path))
    out = mlip_subprocess("data", "validate", path)
    assert out.returncode == 0, out.stderr + out.stdout


# ---- 4. the file-size limit -------------------------------------------------------------------------------


def _convert_under_file_size_limit(src: Path, dst: Path, limit: int) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from mlip_cli.cli import main
        sys.argv = ["mlip", "data", "convert", {str(src)!r}, {str(dst)!r}]
        main()
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SECONDS, env=env)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_convert_past_the_file_size_limit_is_refused_not_crashed(tmp_path):
    src = _good(tmp_path / "big.h5", n=400)
    out = _convert_under_file_size_limit(src, tmp_path / "out.h5", 200_000)  # h5py alone segfaults here (139)
    line = one_error_line(out)
    assert out.returncode == 2, out.stderr + out.stdout
    assert line.startswith("mlip: error:") and "out.h5" in line and "file-size limit" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.h5"]  # nothing half-written left behind
    small = _good(tmp_path / "small.h5", n=3)
    out = _convert_under_file_size_limit(small, tmp_path / "copy.h5", 20_000_000)
    assert out.returncode == 0 and (tmp_path / "copy.h5").exists(), out.stderr + out.stdout
