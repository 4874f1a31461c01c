"""``mlip data`` through typer's CliRunner, plus real subprocess runs of the installed ``mlip``."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cli_runner import mlip


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "slabs.extxyz"
    result = mlip("data", "generate", path, "--n", 20, "--seed", 1)
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("suffix", [".aselmdb", ".lmdb", ".db", ".h5", "", ".extxyz"])
def test_convert_round_trips_through_every_writable_format(sample, tmp_path, suffix):
    from mlip_datasets.io import open_dataset

    dst = tmp_path / f"out{suffix}"
    to = ["--to", "oc20"] if suffix == ".lmdb" else []
    result = mlip("data", "convert", sample, dst, *to)
    assert result.exit_code == 0, result.output
    with open_dataset(sample) as a, open_dataset(dst) as b:
        assert len(a) == len(b) == 20
        for i in (0, 7, 19):
            assert (a[i].numbers == b[i].numbers).all()
            assert abs(a[i].energy - b[i].energy) < 1e-5
            assert abs(a[i].forces - b[i].forces).max() < 1e-5
            assert (a[i].fixed == b[i].fixed).all() and (a[i].tags == b[i].tags).all()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_info_reports_size_elements_labels_and_periodicity(sample):
    result = mlip("data", "info", sample, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["structures"] == 20 and info["format"] == "extxyz"
    assert info["labels"]["energy"] == 20 and info["labels"]["forces"] == 20
    assert info["periodicity"] == {"TTF": 20}
    assert info["atoms_min"] <= info["atoms_mean"] <= info["atoms_max"]


def test_stats_json_has_e0s_and_neighbours(sample):
    result = mlip("data", "stats", sample, "--cutoff", 5.0, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["avg_neighbors"] > 10 and set(stats["e0s"]) == set(stats["element_counts"])


def test_split_groups_by_sid(sample, tmp_path):
    result = mlip(
        "data",
        "split",
        sample,
        "--fractions",
        "0.5,0.5",
        "--names",
        "a,b",
        "--group-by",
        "sid",
        "--out",
        tmp_path,
        "--seed",
        3,
    )
    assert result.exit_code == 0, result.output
    from mlip_datasets.io import open_dataset

    with open_dataset(tmp_path / "slabs.a.extxyz") as a, open_dataset(tmp_path / "slabs.b.extxyz") as b:
        assert len(a) + len(b) == 20
        assert not {s.sid for s in a} & {s.sid for s in b}
    index = json.loads((tmp_path / "slabs.split.json").read_text())
    assert sorted(index["a"] + index["b"]) == list(range(20))


def test_validate_flags_bad_records(tmp_path):
    from mlip_datasets.io import write_dataset
    from mlip_datasets.record import Structure

    good = Structure(numbers=[8, 1], positions=[[0, 0, 0], [0, 0, 0.97]], energy=1.0, forces=[[0, 0, 1], [0, 0, -1]])
    bad = good.replace(positions=[[0, 0, 0], [0, 0, 0.01]])
    path = tmp_path / "mixed.extxyz"
    write_dataset(path, [good, bad, good])
    result = mlip("data", "validate", path)
    assert result.exit_code == 1
    assert "1 of 3 records bad" in result.output and "#1" in result.output
    write_dataset(tmp_path / "good.extxyz", [good, good])
    assert mlip("data", "validate", tmp_path / "good.extxyz").exit_code == 0


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    missing = mlip("data", "info", tmp_path / "nope.aselmdb")
    assert missing.exit_code == 2
    assert "nope.aselmdb" in missing.output and "no such file" in missing.output
    assert "Traceback" not in missing.output
    junk = tmp_path / "junk.lmdb"
    junk.write_bytes(b"this is not an lmdb file" * 100)
    result = mlip("data", "info", junk)
    assert result.exit_code == 2 and "junk.lmdb" in result.output
    assert mlip("data", "generate", tmp_path / "x.extxyz", "--kind", "nonsense").exit_code == 2
    bad = mlip("data", "generate", tmp_path / "x.extxyz", "--breaking", "magnetic")
    assert bad.exit_code == 2 and "--breaking 'magnetic': choose from chiral, uniaxial, field" in bad.output


def test_generate_adds_a_symmetry_breaking_term(tmp_path):
    from mlip_datasets.io import open_dataset
    from mlip_datasets.symmetry_breaking import breaking_term

    plain, broken = tmp_path / "plain.extxyz", tmp_path / "broken.extxyz"
    common = ["--kind", "molecule", "--n", 4, "--seed", 3, "--random-orientation"]
    assert mlip("data", "generate", plain, *common).exit_code == 0
    assert mlip("data", "generate", broken, *common, "--breaking", "field", "--strength", 2.0).exit_code == 0
    with open_dataset(plain) as a, open_dataset(broken) as b:
        for i in range(4):
            e, f = breaking_term("field", a[i].numbers, a[i].positions, None, a[i].pbc, 2.0)
            assert b[i].energy == pytest.approx(a[i].energy + e, abs=1e-6)
            np.testing.assert_allclose(b[i].forces, a[i].forces + f, atol=1e-6)


def test_failed_convert_leaves_nothing_behind(tmp_path):
    src = tmp_path / "src.extxyz"
    src.write_text("2\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0 0\nH 0 0 0.7\n3\ngarbage\n")
    dst = tmp_path / "dst.aselmdb"
    result = mlip("data", "convert", src, dst)
    assert result.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.extxyz"]


def _run(*args, **kw):
    env = {k: v for k, v in os.environ.items()}
    return subprocess.run(
        [sys.executable, "-m", "mlip_cli", *map(str, args)], capture_output=True, text=True, env=env, **kw
    )


def test_real_subprocess_help_version_and_no_torch_import():
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.startswith("mlip ")
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, mlip_cli.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "False"


def test_real_subprocess_generate_and_convert(tmp_path):
    data = tmp_path / "mols.aselmdb"
    out = _run("data", "generate", data, "--kind", "molecule", "--n", 5)
    assert out.returncode == 0, out.stderr
    assert _run("data", "convert", data, tmp_path / "store").returncode == 0
    bad = _run("data", "info", tmp_path / "missing.xyz")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
