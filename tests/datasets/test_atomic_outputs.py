"""Outputs appear whole or not at all: ``mlip data split`` with a corrupt record, outputs in unwritable places."""

from __future__ import annotations

import os
import stat

import lmdb
import pytest
from cli_runner import mlip
from datasets_testlib import random_structures

from mlip_datasets.formats.native import NativeReader
from mlip_datasets.io import open_dataset, write_dataset
from mlip_datasets.split import split_indices


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("mlip: error:")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _native_with_bad_record(path, n: int, bad: int) -> None:
    write_dataset(path, random_structures(n))
    reader = NativeReader(path)
    with lmdb.open(str(reader.files[0]), subdir=False, lock=False) as env, env.begin(write=True) as txn:
        key = bad.to_bytes(8, "big")
        txn.put(key, txn.get(key)[:-5])  # truncated value


def test_split_with_corrupt_record_leaves_nothing(tmp_path):
    n, seed = 12, 0
    _, last = split_indices(n, [0.5, 0.5], seed)
    bad = int(last[len(last) // 2])  # in the last split: the first one is written completely before the failure
    src = tmp_path / "d.lmdb"
    _native_with_bad_record(src, n, bad)
    before = _listing(tmp_path)
    result = mlip("data", "split", src, "--fractions", "0.5,0.5", "--names", "train,valid", "--seed", seed)
    line = _one_error_line(result)
    assert f"{src}: record {bad}: " in line  # names the source and the record
    assert _listing(tmp_path) == before  # no .train, no .valid, no split.json, no temporaries or lock files


def test_split_into_separate_folder_with_corrupt_record_leaves_it_empty(tmp_path):
    n = 10
    src = tmp_path / "d.lmdb"
    _native_with_bad_record(src, n, n - 1)
    out = tmp_path / "out"
    out.mkdir()
    result = mlip("data", "split", src, "--fractions", "0.4,0.3,0.3", "--out", out)
    assert f"{src}: record {n - 1}: " in _one_error_line(result)
    assert _listing(out) == []


def test_split_refuses_existing_index_before_writing_any_split(tmp_path):
    src = tmp_path / "d.extxyz"
    write_dataset(src, random_structures(8))
    (tmp_path / "d.split.json").write_text("{}")
    before = _listing(tmp_path)
    line = _one_error_line(mlip("data", "split", src))
    assert "d.split.json" in line and "already exists" in line
    assert _listing(tmp_path) == before
    assert (tmp_path / "d.split.json").read_text() == "{}"


def test_split_success_writes_everything(tmp_path):
    src = tmp_path / "d.extxyz"
    write_dataset(src, random_structures(10))
    result = mlip("data", "split", src, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert _listing(tmp_path / "o") == ["d.split.json", "d.test.extxyz", "d.train.extxyz", "d.valid.extxyz"]
    assert sum(len(open_dataset(tmp_path / "o" / f"d.{s}.extxyz")) for s in ("train", "valid", "test")) == 10


@pytest.mark.parametrize("ext", ["aselmdb", "db", "lmdb"])
def test_convert_into_read_only_folder(tmp_path, ext):
    src = tmp_path / "x.extxyz"
    write_dataset(src, random_structures(4))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user can write into a mode-0555 folder (root); see the file-in-place test")
        line = _one_error_line(mlip("data", "convert", src, ro / f"out.{ext}"))
        assert f"out.{ext}" in line and "Permission denied" in line
        assert _listing(ro) == []
    finally:
        ro.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("ext", ["aselmdb", "db", "lmdb"])
def test_convert_where_a_file_stands_in_for_the_folder(tmp_path, ext):
    """Unwritable even for root: the output's folder is a plain file."""
    src = tmp_path / "x.extxyz"
    write_dataset(src, random_structures(4))
    (tmp_path / "ro").write_text("not a folder")
    before = _listing(tmp_path)
    line = _one_error_line(mlip("data", "convert", src, tmp_path / "ro" / f"out.{ext}"))
    assert f"out.{ext}" in line and "not a folder" in line
    assert _listing(tmp_path) == before
    assert (tmp_path / "ro").read_text() == "not a folder"


def test_permission_error_while_writing_is_one_line(tmp_path, monkeypatch):
    """The handling the read-only test checks, reproduced for root too: the writer is refused its temporary."""
    import dataclasses

    from mlip_datasets import io

    src = tmp_path / "x.extxyz"
    write_dataset(src, random_structures(3))

    def refused(path, structures, shards=1):
        open(path, "w").close()  # something was created before the refusal: it must not be left behind
        raise PermissionError(13, "Permission denied", str(path))

    real = io.output_format
    monkeypatch.setattr(io, "output_format", lambda p, f=None: dataclasses.replace(real(p, f), write=refused))
    before = _listing(tmp_path)
    line = _one_error_line(mlip("data", "convert", src, tmp_path / "out.aselmdb"))
    assert line.endswith(f"{tmp_path / 'out.aselmdb'}: cannot write the output in {tmp_path}: Permission denied")
    assert _listing(tmp_path) == before
