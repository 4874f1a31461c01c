"""Bad data-set folders and bad atomic numbers: one line naming what is wrong, exit code 2, no traceback.

- A directory whose shards are of more than one format (native + OC20 ``*.lmdb``, ``*.aselmdb`` + ``*.lmdb``) is
  refused, detected or named with ``--from``, instead of silently reading one format and miscounting the other.
- Atomic numbers outside 0..118 are refused when a record is read (naming file, record and the number); ``mlip data
  info`` never indexes ``chemical_symbols`` with them, and ``mlip data validate`` reports the record.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import mlip
from datasets_testlib import random_structures

from mlip_datasets.errors import DataError
from mlip_datasets.io import detect_format, open_dataset, write_dataset
from mlip_datasets.record import AtomicNumberError, Structure
from mlip_datasets.validate import validate


def _merge(tmp_path: Path, parts: dict[str, str]) -> Path:
    """Write a small data set per ``{name: format}`` with the project's writers, then move all shards into one dir."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k, (name, fmt) in enumerate(parts.items()):
        src = tmp_path / f"part{k}"
        write_dataset(src, random_structures(3, seed=k, complete=True), fmt, shards=1)
        shards = [p for p in src.iterdir() if p.suffix in (".lmdb", ".aselmdb")] if src.is_dir() else [src]
        assert len(shards) == 1, shards
        shutil.move(shards[0], mixed / name)
    return mixed


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if "error" in line.lower()]  # besides the progress bar
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("mlip: error: ")
    assert "Traceback" not in result.output and result.output.rstrip().endswith(lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({"a.lmdb": "native", "b.lmdb": "oc20"}, ("native", "oc20")),
        ({"a.lmdb": "oc20", "b.lmdb": "native"}, ("native", "oc20")),
        ({"a.aselmdb": "aselmdb", "b.lmdb": "native"}, ("native", "aselmdb")),
        ({"a.aselmdb": "aselmdb", "b.lmdb": "oc20"}, ("oc20", "aselmdb")),
    ],
)
def test_mixed_shard_formats_are_refused(tmp_path, parts, expected):
    mixed = _merge(tmp_path, parts)
    before = sorted((p.name, p.stat().st_size) for p in mixed.iterdir())
    for call in (
        lambda: detect_format(mixed),
        lambda: open_dataset(mixed),
        *(lambda fmt=fmt: open_dataset(mixed, fmt) for fmt in expected),  # --from does not skip the check
    ):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(str(mixed) + ": directory mixes shard formats")
        for name in expected:
            assert f"{name} (1 shard, e.g. " in message
        for name in parts:
            assert name in message

    line = _one_error_line(mlip("data", "info", mixed))
    assert all(name in line for name in expected) and str(mixed) in line
    _one_error_line(mlip("data", "info", mixed, "--from", expected[0]))
    _one_error_line(mlip("data", "validate", mixed))
    assert sorted((p.name, p.stat().st_size) for p in mixed.iterdir()) == before  # nothing written or removed


@pytest.mark.parametrize("fmt", ["native", "oc20", "aselmdb"])
def test_a_folder_of_one_format_still_opens(tmp_path, fmt):
    folder = tmp_path / "one"
    folder.mkdir()
    for k in range(2):  # two separately written data sets' shards, one format
        src = tmp_path / f"part{k}"
        write_dataset(src, random_structures(2, seed=k, complete=True), fmt)
        for shard in src.iterdir() if src.is_dir() else [src]:
            if shard.suffix in (".lmdb", ".aselmdb") or shard == src:
                suffix = "" if shard.suffix else {"aselmdb": ".aselmdb"}.get(fmt, ".lmdb")
                shutil.move(shard, folder / f"{k}-{shard.name}{suffix}")
    if fmt == "native":  # two native stores' shards do not form one store: the native reader says so itself
        with pytest.raises(DataError, match="native|shard"):
            open_dataset(folder)
        return
    assert detect_format(folder).name == fmt
    with open_dataset(folder) as reader:
        assert len(reader) == 4


# ------------------------------------------------------------------------------------------ atomic numbers


@pytest.mark.parametrize("z", [200, -3, 119])
def test_structure_refuses_atomic_numbers_outside_0_118(z):
    with pytest.raises(AtomicNumberError, match=rf"atomic number {z} \(atom 1\)"):
        Structure(numbers=[1, z], positions=np.zeros((2, 3)))
    with pytest.raises(ValueError):  # readers turn ValueError into a DataError naming file and record
        Structure(numbers=[z], positions=np.zeros((1, 3)))
    assert Structure(numbers=[0, 118], positions=[[0, 0, 0], [2, 0, 0]]).numbers.tolist() == [0, 118]


def _bad(z: int) -> list[Structure]:
    """Three good records with record 1's second atom set to ``z`` after construction (what a file could hold)."""
    records = random_structures(3, seed=5, complete=True)
    records[1].numbers = np.array([6, z] + [8] * (records[1].natoms - 2), dtype=np.int64)[: max(2, records[1].natoms)]
    if records[1].natoms < 2:
        records[1] = records[1].replace(numbers=[6, 8], positions=[[0, 0, 0], [1.2, 0, 0]], forces=np.zeros((2, 3)))
        records[1].numbers = np.array([6, z])
    for name in ("forces", "tags", "fixed"):
        value = getattr(records[1], name)
        if value is not None and len(value) != records[1].natoms:
            setattr(records[1], name, value[: records[1].natoms])
    return records


def _write_asedb(path: Path, z: int) -> None:
    from ase import Atoms
    from ase.db import connect

    with connect(path) as db:
        db.write(Atoms("H2", positions=[[0, 0, 0], [0.8, 0, 0]]))
        db.write(Atoms(numbers=[6, z], positions=[[0, 0, 0], [1.5, 0, 0]]))


@pytest.mark.parametrize(
    ("fmt", "z", "record"),
    [
        ("oc20", 200, "record"),
        ("oc20", -3, "record"),
        ("hdf5", 200, None),  # these two readers do not add file and record to it: one line all the same
        ("aselmdb", 200, None),
        ("aselmdb", -3, None),
        ("asedb", -3, "record id 2"),
    ],
)
def test_bad_atomic_number_in_a_file(tmp_path, fmt, z, record):
    suffix = {"native": "", "oc20": ".lmdb", "hdf5": ".h5", "asedb": ".db", "aselmdb": ".aselmdb"}[fmt]
    path = tmp_path / f"bad{suffix}"
    if fmt == "asedb":
        _write_asedb(path, z)
    else:
        write_dataset(path, _bad(z), fmt)
    with open_dataset(path) as reader:
        with pytest.raises(DataError) as info:
            reader[1]
        message = str(info.value)
        assert f"atomic number {z} (atom 1)" in message and "\n" not in message
        if record is not None:  # the readers that wrap a ValueError name the file and record
            assert message.startswith(str(path)) and record in message
        problems, n_bad = validate(reader)
    assert n_bad == 1 and problems[0].index == 1 and f"atomic number {z}" in problems[0].message

    line = _one_error_line(mlip("data", "info", path))
    assert f"atomic number {z} (atom 1)" in line
    result = mlip("data", "validate", path)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"atomic number {z} (atom 1)" in result.output and "1 of " in result.output


def test_info_shows_dummy_atoms_and_validate_reports_them(tmp_path):
    path = tmp_path / "dummy.extxyz"
    records = [Structure(numbers=[0, 1], positions=[[0, 0, 0], [1, 0, 0]], energy=1.0)]
    write_dataset(path, records)
    result = mlip("data", "info", path, "--json")
    assert result.exit_code == 0, result.output
    assert '"X H"' in result.output or '"H X"' in result.output
    result = mlip("data", "validate", path)
    assert result.exit_code == 1 and "unknown element numbers [0]" in result.output


def test_symbol_lookup_never_raises():
    from mlip_cli.commands.data import _symbol, _symbols

    assert _symbols([1, 0, 200, -3]) == "H X Z=200 Z=-3"
    assert _symbol(118) == "Og"
