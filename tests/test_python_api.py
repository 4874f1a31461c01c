"""The Python API as users of MACE/ASE expect it: a calculator from a path, Atoms into write_dataset, sliceable
readers, and ``dir()`` of the packages listing their public names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read
from tiny_models import tiny_config

import mlip_cli
import mlip_datasets
from mlip_cli import MLIPCalculator
from mlip_cli.checkpoint import save_checkpoint
from mlip_cli.models import build_model
from mlip_datasets import DataError, open_dataset, write_dataset
from mlip_datasets.ase_convert import atoms_to_structure


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(tiny_config("tdn", lmax=1), dtype=torch.float64)
    model.set_statistics(e0s={1: -1.0, 8: -2.0, 29: -3.0})
    state = {"model_config": model.config.to_dict(), "dtype": "float64", "model_state": model.state_dict()}
    return save_checkpoint(tmp_path_factory.mktemp("model") / "best.pt", {**state, "ema_state": None})


def _labelled(k: int):
    """Cu cells and water molecules with random labels on a SinglePointCalculator, as ase.io gives them."""
    rng = np.random.default_rng(k)
    atoms = bulk("Cu", "fcc", a=3.6) * (1, 1, k % 3 + 1) if k % 2 == 0 else molecule("H2O")
    atoms.rattle(0.05, seed=k)
    results = {"energy": float(rng.normal() * 10), "forces": rng.normal(size=(len(atoms), 3))}
    if atoms.pbc.all():
        results["stress"] = rng.normal(size=6)
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["sid"] = k
    return atoms


# -- MLIPCalculator("best.pt") ---------------------------------------------------------------------------------


@pytest.mark.parametrize("as_type", [str, Path])
def test_calculator_from_a_path_equals_from_checkpoint(checkpoint, as_type):
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms.rattle(0.05, seed=0)
    reference = atoms.copy()
    reference.calc = MLIPCalculator.from_checkpoint(checkpoint)
    atoms.calc = MLIPCalculator(as_type(checkpoint))
    assert atoms.calc.dtype == torch.float64 and atoms.calc.device == torch.device("cpu")
    assert atoms.get_potential_energy() == reference.get_potential_energy()
    np.testing.assert_array_equal(atoms.get_forces(), reference.get_forces())
    np.testing.assert_array_equal(atoms.get_stress(), reference.get_stress())


def test_calculator_from_a_path_takes_dtype_and_run_directory(checkpoint):
    calc = MLIPCalculator(str(checkpoint.parent), dtype="float32")  # a run directory: best.pt
    assert calc.dtype == torch.float32 and next(calc.model.parameters()).dtype == torch.float32


def test_calculator_from_a_missing_path_is_one_clear_error(tmp_path):
    from mlip_cli.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="nothing.pt"):
        MLIPCalculator(tmp_path / "nothing.pt")


# -- write_dataset(Atoms) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".extxyz", ".h5", ".aselmdb"])
def test_write_dataset_takes_ase_atoms(tmp_path, suffix):
    frames = [_labelled(k) for k in range(5)]
    path = tmp_path / f"out{suffix}"
    assert write_dataset(path, (a for a in frames)) == 5  # any iterable, a generator too
    with open_dataset(path) as reader:
        assert len(reader) == 5
        for atoms, s in zip(frames, reader):
            assert (s.numbers == atoms.numbers).all()
            np.testing.assert_allclose(s.positions, atoms.positions, atol=1e-8)
            assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
            np.testing.assert_allclose(s.forces, atoms.get_forces(), atol=1e-8)
            assert s.sid == atoms.info["sid"]
            if atoms.pbc.all():
                voigt = [s.stress[i, j] for i, j in ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))]
                np.testing.assert_allclose(voigt, atoms.get_stress(), atol=1e-8)
            else:
                assert s.stress is None


def test_write_dataset_takes_one_atoms_and_mixed_records(tmp_path):
    one = _labelled(1)
    write_dataset(tmp_path / "one.extxyz", one)
    back = read(tmp_path / "one.extxyz", ":")
    assert len(back) == 1 and back[0].get_chemical_formula() == one.get_chemical_formula()
    mixed = [_labelled(0), atoms_to_structure(_labelled(1))]
    assert write_dataset(tmp_path / "mixed.extxyz", mixed) == 2
    assert [len(a) for a in read(tmp_path / "mixed.extxyz", ":")] == [len(_labelled(0)), 3]


def test_write_dataset_refuses_other_items_and_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="item 1 to write is a str, not a Structure or ase.Atoms"):
        write_dataset(tmp_path / "bad.extxyz", [_labelled(0), "H2O"])
    assert list(tmp_path.iterdir()) == []


def test_write_dataset_refuses_results_of_a_shared_calculator(checkpoint, tmp_path):
    """One calculator on several Atoms keeps only the last one's results: writing those for the others would be
    silently wrong labels (the Atoms here have the same size, so no shape check would notice)."""
    first, second = bulk("Cu", "fcc", a=3.6), bulk("Cu", "fcc", a=3.7)
    calc = MLIPCalculator(checkpoint)
    for atoms in (first, second):
        atoms.calc = calc
        atoms.get_potential_energy()
    with pytest.raises(DataError, match="item 0 to write: its calculator holds results for other atoms"):
        write_dataset(tmp_path / "shared.extxyz", [first, second])
    assert list(tmp_path.iterdir()) == []
    write_dataset(tmp_path / "last.extxyz", second)  # the results are this one's
    assert read(tmp_path / "last.extxyz").get_potential_energy() == second.get_potential_energy()


# -- reader slicing ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[".extxyz", ".h5", ".aselmdb", ".db", ""])
def seven(tmp_path_factory, request):
    """Seven labelled frames written in one format, and the extxyz copy that ase.io reads as the oracle."""
    folder = tmp_path_factory.mktemp("slicing")
    frames = [_labelled(k) for k in range(7)]
    oracle = folder / "oracle.extxyz"
    write_dataset(oracle, frames)
    path = folder / f"seven{request.param}"
    if request.param != ".extxyz":
        write_dataset(path, frames)
    else:
        path = oracle
    return path, oracle


@pytest.mark.parametrize("index", ["2:5", "-3:", "::2", "5:1:-2", "10:20", ":-1"])
def test_reader_slices_match_ase_io(seven, index):
    path, oracle = seven
    start, stop, *step = (int(x) if x else None for x in index.split(":"))
    part = slice(start, stop, step[0] if step else None)
    with open_dataset(path) as reader:
        got = reader[part]
    want = read(oracle, ":")[part]  # Python's list slicing (ase.io.read's index string drops negative steps)
    assert isinstance(got, list) and len(got) == len(want)
    for s, atoms in zip(got, want):
        assert s.sid == atoms.info["sid"]
        np.testing.assert_allclose(s.positions, atoms.positions, atol=1e-8)
        assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-8)


def test_reader_negative_and_out_of_range_indices(seven):
    path, oracle = seven
    with open_dataset(path) as reader:
        for index in (-1, -7, np.int64(-2), 3):
            assert reader[index].sid == read(oracle, int(index)).info["sid"]
        for index in (7, -8, 100):
            with pytest.raises(IndexError, match="out of range for 7 records"):
                reader[index]
        with pytest.raises(TypeError):
            reader[1.0]


# -- dir() -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [mlip_cli, mlip_datasets])
def test_dir_lists_every_public_name_and_each_resolves(module):
    names = dir(module)
    assert set(module.__all__) <= set(names)
    for name in module.__all__:
        assert getattr(module, name) is not None
    assert {"MLIPCalculator", "load_model"} <= set(dir(mlip_cli))
    assert {"open_dataset", "write_dataset", "Structure", "Reader"} <= set(dir(mlip_datasets))


def test_importing_and_listing_the_packages_stays_light():
    """``dir()`` must not import torch or ase: ``mlip --help`` imports these packages."""
    code = (
        "import sys, mlip_cli, mlip_datasets; dir(mlip_cli); dir(mlip_datasets); "
        "print(sorted(m for m in ('torch', 'ase') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
