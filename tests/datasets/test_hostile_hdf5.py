"""Hostile mlip-hdf5 files: a good file written by our writer, then corrupted with h5py.

Corrupt offsets, a non-numeric version, huge declared sizes and out-of-range atomic numbers are refused with one
line naming the file (and the record where there is one), no traceback, and bounded memory.
"""

import os
import subprocess
import sys
import textwrap
import zlib
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


@pytest.mark.parametrize("name", ["energy", "forces"])
def test_a_mask_or_label_of_the_wrong_length_is_refused(tmp_path, name):
    path = _good(tmp_path / "label.h5")
    with h5py.File(path, "a") as f:
        short = f[name][:-1]  # the issue-12 "short forces": one row fewer than the atoms (or structures)
        _replace(f, name, data=short)
    _refused(path, f"{name!r} has shape {short.shape}")


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


# ---- 5. groups of conformers (ANI/SPICE/modelforge layout) ---------------------------------------------------


def _group_file(path: Path, **replace) -> Path:
    """One SPICE-like group of 3 conformers of 3 atoms with declared units; ``replace`` swaps datasets, given as
    arrays or as ``h5py`` creation keyword dicts (a declared shape with nothing written)."""
    rng = np.random.default_rng(5)
    data = {
        "atomic_numbers": np.array([8, 1, 1]),
        "conformations": rng.normal(size=(3, 3, 3)) * 2,
        "dft_total_energy": rng.normal(size=3),
        "forces": rng.normal(size=(3, 3, 3)),
    }
    data.update(replace)
    with h5py.File(path, "w") as f:
        g = f.create_group("m")
        for name, value in data.items():
            if isinstance(value, dict):
                g.create_dataset(name, **value)
            else:
                g[name] = value
        for name, unit in (("conformations", "bohr"), ("dft_total_energy", "hartree"), ("forces", "hartree/bohr")):
            g[name].attrs["units"] = unit
    return path


def test_the_group_file_itself_reads(tmp_path):
    path = _group_file(tmp_path / "good.h5")
    result = read_in_subprocess(path)
    assert result["len"] == 3 and result["errors"] == [], result


@pytest.mark.parametrize(
    "forces, shape",
    [(np.zeros((2, 3, 3)), "(2, 3, 3)"), (np.zeros((3, 2, 3)), "(3, 2, 3)"), (np.zeros((3, 3)), "(3, 3)")],
    ids=["fewer-conformers", "fewer-atoms", "flat"],
)
def test_short_forces_in_a_group_are_refused_with_one_line(tmp_path, forces, shape):
    path = _group_file(tmp_path / "short.h5", forces=forces)
    _refused(path, "record /m", f"'forces' has shape {shape}, expected (3, 3, 3) for 3 conformers of 3 atoms")


def test_species_and_conformer_counts_that_disagree_are_refused(tmp_path):
    _refused(_group_file(tmp_path / "z.h5", atomic_numbers=np.array([8, 1])), "record /m", "'atomic_numbers' has")
    _refused(_group_file(tmp_path / "e.h5", dft_total_energy=np.zeros(4)), "'dft_total_energy' has shape (4,)")
    _refused(_group_file(tmp_path / "c.h5", charge=np.zeros(2)), "'charge' has shape (2,)")


_UNWRITTEN = dict(dtype=np.float64, chunks=(1, 1, 3))


@pytest.mark.parametrize(
    "replace, needle",
    [
        (
            dict(
                conformations=dict(shape=(10**9, 3, 3), **_UNWRITTEN),
                dft_total_energy=dict(shape=(10**9,), dtype=np.float64, chunks=(1,)),
                forces=dict(shape=(10**9, 3, 3), **_UNWRITTEN),
            ),
            "'conformations' declares shape (1000000000, 3, 3)",
        ),
        (
            dict(
                conformations=dict(shape=(1, 10**10, 3), **_UNWRITTEN),
                atomic_numbers=dict(shape=(10**10,), dtype=np.int64, chunks=(1024,)),
                dft_total_energy=np.zeros(1),
                forces=dict(shape=(1, 10**10, 3), **_UNWRITTEN),
            ),
            "declares shape",
        ),
        (dict(atomic_numbers=dict(shape=(3,), dtype="S400000000")), "'atomic_numbers' declares shape (3,)"),
    ],
    ids=["conformers", "atoms", "wide-species"],
)
def test_huge_declared_group_datasets_are_refused_with_bounded_memory(tmp_path, replace, needle):
    path = _group_file(tmp_path / "huge.h5", **replace)
    assert path.stat().st_size < 1_000_000
    errors = read_in_subprocess(path)["errors"]
    assert len(errors) == 1 and "huge.h5" in errors[0] and "record /m" in errors[0] and needle in errors[0], errors
    _refused(path, needle)


def test_links_to_other_files_are_not_followed(tmp_path):
    good = _group_file(tmp_path / "good.h5")
    path = tmp_path / "linked.h5"
    with h5py.File(path, "w") as f:
        f["elsewhere"] = h5py.ExternalLink(str(good), "/m")
        f["loop"] = h5py.SoftLink("/")
    _refused(path, "no structures found")


# ---- 6. compressed chunks that inflate far beyond the file ----------------------------------------------------

_BOMB_BYTES = 400_000_000  # one chunk; reading any element of it would inflate all of it


def _deflated_zeros(nbytes: int) -> bytes:
    """``nbytes`` zeros, deflated as HDF5's gzip filter stores them, without ever holding them in memory."""
    packer, block = zlib.compressobj(1), bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(nbytes >> 20)]
    return b"".join([*parts, packer.compress(bytes(nbytes % (1 << 20))), packer.flush()])


def _chunk_bomb(f, name: str) -> None:
    """Replace dataset ``name`` by one of the same shape whose single gzip chunk holds ``_BOMB_BYTES``."""
    shape, attrs = f[name].shape, dict(f[name].attrs)
    row = int(np.prod(shape[1:], dtype=np.int64)) * 8
    rows = _BOMB_BYTES // row
    del f[name]
    ds = f.create_dataset(
        name, shape=shape, maxshape=(None, *shape[1:]), chunks=(rows, *shape[1:]), dtype=np.float64, compression="gzip"
    )
    ds.attrs.update(attrs)
    ds.id.write_direct_chunk((0,) * len(shape), _deflated_zeros(rows * row))


@pytest.mark.parametrize("layout", ["mlip-hdf5", "groups"])
def test_compressed_chunk_bombs_are_refused_with_bounded_memory(tmp_path, layout):
    path = tmp_path / "bomb.h5"
    if layout == "groups":
        _group_file(path)
        name, where = "m/conformations", "record /m: "
    else:
        _good(path)
        name, where = "positions", ""
    with h5py.File(path, "a") as f:
        _chunk_bomb(f, name)
    assert path.stat().st_size < _BOMB_BYTES // 100
    needle = f"{where}{name.rsplit('/', 1)[-1]!r} is stored in compressed chunks of"
    errors = read_in_subprocess(path)["errors"]
    assert len(errors) == 1 and "bomb.h5" in errors[0] and needle in errors[0], errors
    _refused(path, needle)
