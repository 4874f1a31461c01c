"""``mlip predict``: labels equal the ASE calculator's per structure, in every writable format, with skips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.io import read, write
from cli_runner import mlip
from tiny_models import tiny_config

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.checkpoint import save_checkpoint
from mlip_cli.models import build_model
from mlip_datasets.io import open_dataset
from mlip_datasets.keys import LabelKeys
from mlip_datasets.record import stress_to_voigt

UNKNOWN = 2  # the input frame with xenon, which the tiny model does not know
EXTXYZ_DIGITS = 6e-9  # ase writes extxyz columns (forces) with 8 decimals


def _frames() -> list[Atoms]:
    """Molecules, a bulk cell, a slab (periodic in x, y) and one structure with Xe, of 3 to 16 atoms."""
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    cu.numbers[3] = 79
    cu.rattle(0.05, seed=1)
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=2)
    slab.info.clear()  # adsorbate_info: a dict extxyz cannot store
    water = molecule("H2O")
    water.info["charge"] = 0.0
    frames = [molecule("CH3OH"), cu, Atoms("XeH", positions=[[0, 0, 0], [0, 0, 1.7]]), slab, water]
    frames += [molecule("CH4"), bulk("Ni", "fcc", a=3.5, cubic=True)]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.03, seed=10 + k)
    return frames


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained float64 tdn model (tiny); E0s so that energies are not near zero."""
    torch.manual_seed(0)
    model = build_model(tiny_config("tdn", lmax=1, avg_num_neighbors=10.0), dtype=torch.float64)
    model.set_statistics(e0s={1: -1.0, 6: -4.0, 8: -2.0, 28: -5.0, 29: -3.0, 79: -3.5})
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    state = {"model_config": model.config.to_dict(), "dtype": "float64", "model_state": model.state_dict()}
    return save_checkpoint(path, {**state, "ema_state": None})


@pytest.fixture(scope="module")
def structures(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "structures.extxyz"
    write(path, _frames())
    return path


@pytest.fixture(scope="module")
def expected(checkpoint, structures):
    """What the ASE calculator gives for each input frame the model knows: (energy, forces, stress or None)."""
    calc = MLIPCalculator.from_checkpoint(checkpoint, dtype="float64")
    out = []
    for k, atoms in enumerate(read(structures, ":")):  # as written: extxyz rounds positions
        if k == UNKNOWN:
            continue
        atoms.calc = calc
        stress = atoms.get_stress() if atoms.pbc.any() else None
        out.append((atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False), stress))
    return out


def _check(got_energy, got_forces, got_stress, want, atol: float = 1e-10) -> None:
    """Equal in float64; ``atol``: what the output format keeps (extxyz columns have 8 decimals)."""
    energy, forces, stress = want
    assert got_energy == pytest.approx(energy, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(got_forces, forces, rtol=0, atol=atol)
    if stress is None:
        assert got_stress is None
    else:
        np.testing.assert_allclose(got_stress, stress, rtol=0, atol=1e-10)


def test_predictions_equal_the_calculator_and_skip_unknown_elements(checkpoint, structures, expected, tmp_path):
    out = tmp_path / "predicted.extxyz"
    # 20 atoms per call: several structures per batch, and the 16-atom cell in a batch of its own
    result = mlip("predict", checkpoint, structures, "--out", out, "--batch-atoms", 20)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    skip_lines = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skip_lines) == 1 and f"#{UNKNOWN} (Xe)" in skip_lines[0], result.stderr
    frames = read(out, ":")
    assert len(frames) == len(expected) == len(_frames()) - 1
    inputs = [a for k, a in enumerate(read(structures, ":")) if k != UNKNOWN]
    for atoms, source, want in zip(frames, inputs, expected):
        assert (atoms.numbers == source.numbers).all()
        np.testing.assert_allclose(atoms.positions, source.positions, atol=1e-12)
        results = atoms.calc.results
        _check(results["energy"], results["forces"], results.get("stress"), want, atol=EXTXYZ_DIGITS)
    assert frames[1].pbc.all() and "stress" in frames[1].calc.results  # bulk
    assert not frames[0].pbc.any() and "stress" not in frames[0].calc.results  # molecule
    assert frames[3].info["charge"] == 0.0  # non-label info is kept
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("suffix", [".h5", ".aselmdb", ""])
def test_any_output_format_reads_back_with_open_dataset(checkpoint, structures, expected, tmp_path, suffix):
    out = tmp_path / f"predicted{suffix}"
    result = mlip("predict", checkpoint, structures, "--out", out)
    assert result.exit_code == 0, result.output
    with open_dataset(out) as reader:
        assert len(reader) == len(expected)
        for s, want in zip(reader, expected):
            _check(s.energy, s.forces, _voigt(s.stress), want)


def _voigt(stress):
    return None if stress is None else stress_to_voigt(stress)


def test_extxyz_label_keys_as_mace_eval_configs_writes_them(checkpoint, structures, expected, tmp_path):
    out = tmp_path / "mace.xyz"
    keys = ["--energy-key", "MACE_energy", "--forces-key", "MACE_forces", "--stress-key", "MACE_stress"]
    result = mlip("predict", checkpoint, structures, "-o", out, *keys)
    assert result.exit_code == 0, result.output
    frames = read(out, ":")
    for atoms, want in zip(frames, expected):
        assert atoms.calc is None or "energy" not in atoms.calc.results
        forces = atoms.arrays["MACE_forces"]
        _check(atoms.info["MACE_energy"], forces, atoms.info.get("MACE_stress"), want, atol=EXTXYZ_DIGITS)
    mace = LabelKeys(energy="MACE_energy", forces="MACE_forces", stress="MACE_stress")
    with open_dataset(out, keys=mace) as reader:
        assert reader[1].energy == pytest.approx(expected[1][0], rel=1e-10)


def test_label_keys_for_a_format_with_fixed_names_is_one_line(checkpoint, structures, tmp_path):
    result = mlip("predict", checkpoint, structures, "-o", tmp_path / "p.h5", "--energy-key", "MACE_energy")
    assert result.exit_code == 2
    assert "mlip: error: --energy-key/--forces-key/--stress-key apply to extxyz output" in result.output
    assert not (tmp_path / "p.h5").exists()


def test_refuses_an_existing_output_unless_overwrite(checkpoint, structures, tmp_path):
    out = tmp_path / "p.extxyz"
    out.write_text("keep me\n")
    result = mlip("predict", checkpoint, structures, "--out", out)
    assert result.exit_code == 2
    assert "already exists (pass --overwrite to replace it)" in result.output
    assert out.read_text() == "keep me\n"
    result = mlip("predict", checkpoint, structures, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(read(out, ":")) == len(_frames()) - 1


def test_json_summary(checkpoint, structures, tmp_path):
    out = tmp_path / "p.extxyz"
    result = mlip("predict", checkpoint, structures, "--out", out, "--json", "--threads", 1, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["count"] == len(_frames()) - 1 and report["skipped"] == 1
    assert report["skipped_structures"][0]["index"] == UNKNOWN
    assert report["skipped_structures"][0]["unknown_elements"] == [54]
    assert report["output"] == str(out) and report["seconds"] > 0
    assert len(read(out, ":")) == report["count"]


def test_nothing_predictable_is_an_error_and_writes_nothing(checkpoint, tmp_path):
    data = tmp_path / "xenon.extxyz"
    write(data, [Atoms("Xe2", positions=[[0, 0, 0], [0, 0, 3.0]]), Atoms("Kr", positions=[[0, 0, 0]])])
    out = tmp_path / "p.extxyz"
    result = mlip("predict", checkpoint, data, "--out", out)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("mlip: error: ") and "#0 (Xe), #1 (Kr)" in lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xenon.extxyz"]


def test_predict_labels_on_structures_skips_non_finite_positions(checkpoint, structures, expected):
    """The library call on a list of Structures, one structure per model call; NaN positions are skipped."""
    from mlip_cli.checkpoint import load_model
    from mlip_cli.predict import predict_labels

    with open_dataset(structures) as reader:
        inputs = list(reader)
    broken = inputs[0].replace(positions=np.where(np.arange(3) == 1, np.nan, inputs[0].positions))
    skipped = []
    got = list(predict_labels(load_model(checkpoint), [broken, *inputs], batch_atoms=1, skipped=skipped))
    assert [(s.index, s.reason) for s in skipped] == [
        (0, "non-finite positions"),
        (UNKNOWN + 1, "elements the model does not know"),
    ]
    assert len(got) == len(expected)
    for s, want in zip(got, expected):
        _check(s.energy, s.forces, _voigt(s.stress), want)
