"""One CLI: the same option names and meanings in every command, outputs never replaced without --overwrite,
flags shown as flags, full-width tables when piped, and no flood of third-party warnings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import pytest
from ase.io import read, write
from ase_testlib import periodic_bulk
from cli_runner import mlip

COMMANDS = [
    ["train"],
    ["eval"],
    ["predict"],
    ["relax"],
    ["md"],
    ["lammps"],
    ["export"],
    ["select"],
    ["bench", "tp"],
    ["data", "info"],
    ["data", "convert"],
    ["data", "split"],
    ["data", "validate"],
    ["data", "stats"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_on_off_options_as_flags(command):
    result = mlip(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "--help" in result.output


@pytest.mark.parametrize(
    "command", [["train"], ["eval"], ["predict"], ["relax"], ["md"], ["lammps"], ["select"]], ids=" ".join
)
def test_model_commands_take_device_dtype_threads(command):
    text = mlip(*command, "--help").output
    for option in ("--device", "--dtype", "--threads"):
        assert option in text, option


@pytest.mark.parametrize("command", [["md"], ["relax"]], ids=" ".join)
def test_one_trajectory_option(command):
    text = mlip(*command, "--help").output
    assert "--trajectory" in text and "--overwrite" in text


def test_md_refuses_to_replace_outputs_without_overwrite(checkpoint, tmp_path):
    src = tmp_path / "bulk.extxyz"
    write(src, periodic_bulk())
    traj = tmp_path / "md.extxyz"
    traj.write_text("keep me\n")
    args = ("md", src, "-m", checkpoint, "--steps", 2, "--trajectory", traj, "--trajectory-interval", 1)
    refused = mlip(*args)
    assert refused.exit_code == 2
    assert f"{traj}: trajectory already exists (pass --overwrite to replace it)" in refused.output
    assert traj.read_text() == "keep me\n"
    replaced = mlip(*args, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert len(read(traj, ":")) == 3
    # the old spelling still works
    assert mlip("md", src, "-m", checkpoint, "--steps", 1, "--traj", tmp_path / "t2.extxyz").exit_code == 0


def test_relax_refuses_a_used_trajectory_folder_and_cell_relaxation_is_quiet(checkpoint, tmp_path, monkeypatch):
    import scipy.linalg

    real_logm, calls = scipy.linalg.logm, []

    def noisy_logm(matrix, *args, **kwargs):  # what scipy does for some cells: warn on every call
        calls.append(1)
        warnings.warn("logm result may be inaccurate, approximate err = 1e-13", RuntimeWarning, stacklevel=2)
        return real_logm(matrix, *args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "logm", noisy_logm)
    src = tmp_path / "bulk.extxyz"
    write(src, periodic_bulk())
    folder = tmp_path / "traj"
    folder.mkdir()
    (folder / "000000.extxyz").write_text("old\n")
    args = ("relax", src, "-m", checkpoint, "--steps", 3, "--trajectory", folder, "--relax-cell")
    refused = mlip(*args)
    assert refused.exit_code == 2 and "trajectory folder already exists" in refused.output
    assert (folder / "000000.extxyz").read_text() == "old\n"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = mlip(*args, "--overwrite", "--json")
    assert done.exit_code in (0, 1), done.output  # 3 steps may not converge; the point is the output
    assert calls and not [w for w in caught if "logm" in str(w.message)]
    assert "logm" not in done.output
    assert len(read(folder / "000000.extxyz", ":")) >= 1


def test_piped_tables_keep_their_width(tmp_path):
    """A table wider than 80 columns is not wrapped when stdout is a pipe (no COLUMNS set)."""
    src = tmp_path / "a_rather_long_file_name_so_that_the_table_is_wider_than_eighty_columns_in_total.xyz"
    write(src, periodic_bulk())
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [sys.executable, "-m", "mlip_cli", "data", "info", str(src)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert str(src) in done.stdout  # the whole path on one line
    assert max(len(line) for line in done.stdout.splitlines()) > 80


def test_bench_json_is_a_flag_like_everywhere(tmp_path):
    text = mlip("bench", "tp", "--help").output
    assert re.search(r"--json\s+Print", text) and "--out" in text
    out = mlip("data", "info", tmp_path / "missing.xyz", "--json")
    assert out.exit_code != 0
    write(tmp_path / "x.xyz", periodic_bulk())
    info = mlip("data", "info", tmp_path / "x.xyz", "--json")
    assert json.loads(info.stdout)["structures"] == 1
