"""``mlip export``: the artifact runs in a process that cannot import the project and gives the Python model's
energy, forces and stress (to 1e-10 relative, float64) for a molecule, a slab and a bulk cell, every family."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.neighborlist import primitive_neighbor_list
from cli_runner import mlip
from plain_torch_client import neighbour_edges
from tiny_models import tiny_config

from mlip_cli.checkpoint import load_model, save_checkpoint
from mlip_cli.models import build_model, registered_families
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure

CLIENT = Path(__file__).with_name("plain_torch_client.py")
PROJECT = ("mlip_cli", "mlip_kernels", "mlip_datasets")
FORMATS = ["program", pytest.param("aoti", marks=pytest.mark.slow)]  # aoti: a C++ compile per model

# Run in the child before the client: drop the project's folders (the editable install's .pth puts them on
# sys.path even under -I), prove the project cannot be imported, run the client, and prove it imported none.
CHILD = """
import importlib, runpy, sys
from pathlib import Path
def project(entry):
    p = Path(entry or '.')
    return any((p / name / '__init__.py').exists() for name in {names})
sys.path[:] = [e for e in sys.path if not project(e)]
for name in ('mlip_cli.models', 'mlip_kernels', 'mlip_datasets'):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f'{{name}} is importable in the child')
for name in [m for m in sys.modules if m.split('.')[0] in {names}]:  # empty namespace stubs of the failed imports
    del sys.modules[name]
sys.argv = [{client!r}] + sys.argv[1:]
runpy.run_path({client!r}, run_name='__main__')
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {names})
if loaded:
    raise SystemExit(f'the client imported {{loaded}}')
""".format(names=PROJECT, client=str(CLIENT))


def structures() -> dict[str, Atoms]:
    """A molecule (no pbc), a Cu(111) slab with an O adatom (pbc TTF), a triclinic Cu-Au bulk (pbc TTT)."""
    mol = molecule("CH3OH")
    mol.rattle(0.05, seed=0)
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=1)
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    cu.numbers[1] = 79
    cu.rattle(0.08, seed=2)
    return {"molecule": mol, "slab": slab, "bulk": cu}


def python_model_outputs(model, atoms: Atoms) -> dict[str, np.ndarray]:
    """The Python model on its own neighbour list (mlip_datasets), through the batch path every command uses."""
    s = Structure(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc)
    batch = collate_graphs([structure_to_graph(s, model.cutoff, dtype=torch.float64)])
    out = model(batch, compute_forces=True, compute_stress=True)
    return {"energy": out["energy"][0].numpy(), "forces": out["forces"].numpy(), "stress": out["stress"][0].numpy()}


def assert_relative(got: np.ndarray, want: np.ndarray, rel: float = 1e-10) -> None:
    """``got`` equals ``want`` to ``rel`` of the largest entry of ``want`` (exactly, where it is all zeros)."""
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * scale)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """family -> (float64 model with E0s, its checkpoint)."""
    out = {}
    for family in registered_families():
        torch.manual_seed(0)
        model = build_model(tiny_config(family), dtype=torch.float64).eval()
        model.set_statistics(e0s={1: -1.0, 8: -2.0, 29: -3.0}, scale=1.3, shift=0.1)
        state = {"model_config": model.config.to_dict(), "dtype": "float64", "model_state": model.state_dict()}
        path = save_checkpoint(tmp_path_factory.mktemp(family) / "best.pt", {**state, "ema_state": None})
        out[family] = (model, path)
    torch.manual_seed(0)
    ensemble = build_model({**tiny_config("tdn"), "ensemble": 2}, dtype=torch.float64).eval()
    state = {"model_config": ensemble.config.to_dict(), "dtype": "float64", "model_state": ensemble.state_dict()}
    out["tdn-ensemble"] = (
        ensemble,
        save_checkpoint(tmp_path_factory.mktemp("ens") / "best.pt", {**state, "ema_state": None}),
    )
    return out


@pytest.fixture(scope="module")
def artifacts(models, tmp_path_factory):
    """(family, format) -> the exported file, exported once through the CLI."""
    made = {}

    def get(family: str, fmt: str) -> Path:
        if (family, fmt) not in made:
            out = tmp_path_factory.mktemp("export") / f"{family}.pt2"
            result = mlip("export", models[family][1], out, "--format", fmt)
            assert result.exit_code == 0, result.output
            made[family, fmt] = out
        return made[family, fmt]

    return get


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", registered_families())
def test_artifact_runs_without_the_project_and_equals_the_python_model(family, fmt, models, artifacts, tmp_path):
    model, _ = models[family]
    atoms = structures()
    names = []
    for name, a in atoms.items():
        np.savez(tmp_path / f"{name}.npz", positions=a.positions, numbers=a.numbers, cell=a.cell.array, pbc=a.pbc)
        names.append(str(tmp_path / f"{name}.npz"))
    clean = tmp_path / "clean"
    clean.mkdir()
    child = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, str(artifacts(family, fmt)), fmt, str(tmp_path / "out.npz"), *names],
        cwd=clean,
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for k, (name, a) in enumerate(atoms.items()):
        want = python_model_outputs(model, a)
        assert np.abs(want["forces"]).max() > 1e-3  # the comparison means something
        for key in ("energy", "forces", "stress"):
            assert got[f"{key}_{k}"].shape == want[key].shape, (name, key)
            assert_relative(got[f"{key}_{k}"], want[key])
        if name == "molecule":
            assert not got[f"stress_{k}"].any()
        else:
            assert np.abs(got[f"stress_{k}"]).max() > 1e-6


def test_client_neighbour_list_is_ases():
    """The README's brute-force neighbour list gives ASE's edges (sender, receiver, integer shift)."""
    for name, a in structures().items():
        edge_index, shifts = neighbour_edges(a.positions, a.cell.array, a.pbc, 3.5)
        i, j, S = primitive_neighbor_list("ijS", a.pbc, a.cell.array, a.positions, 3.5)
        ours = sorted(zip(edge_index[0], edge_index[1], *shifts.astype(int).T))
        assert ours == sorted(zip(i, j, *S.T)), name
        assert len(ours) > 0


def _run_program(path: Path, atoms: Atoms):
    program = torch.export.load(path).module()
    edge_index, shifts = neighbour_edges(atoms.positions, atoms.cell.array, atoms.pbc, 3.5)

    def t(x, dtype):
        return torch.tensor(np.asarray(x), dtype=dtype)

    f64 = torch.float64
    args = (t(atoms.positions, f64), t(atoms.numbers, torch.long), t(atoms.cell.array, f64), t(atoms.pbc, torch.bool))
    args += (t(edge_index, torch.long).reshape(2, -1), t(shifts, f64).reshape(-1, 3), t(0.0, f64), t(1.0, f64))
    return [x.numpy() for x in program(*args)]


@pytest.mark.parametrize("family", [*registered_families(), "tdn-ensemble"])
def test_sizes_are_dynamic_down_to_one_atom_and_no_edges(family, models, artifacts):
    """One atom alone (N = 1, E = 0), a dimer (E = 2), a one-atom fcc cell (only self-image edges)."""
    model, _ = models[family]
    cases = [
        Atoms("Cu", positions=[[0, 0, 0]]),
        Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]]),
        bulk("Cu", "fcc", a=3.6),
    ]
    for atoms in cases:
        energy, forces, stress = _run_program(artifacts(family, "program"), atoms)
        want = python_model_outputs(model, atoms)
        assert_relative(energy, want["energy"])
        assert_relative(forces, want["forces"])
        assert_relative(stress, want["stress"])


def test_unknown_element_gives_nan_not_another_elements_energy(artifacts):
    atoms = molecule("H2O")
    atoms.numbers[0] = 3  # Li: not in the model's elements
    energy, forces, stress = _run_program(artifacts("tdn", "program"), atoms)
    assert np.isnan(energy) and np.isnan(forces).all() and np.isnan(stress).all()


def test_metadata_states_the_contract(artifacts, models):
    extra = {"mlip_export.json": ""}
    torch.export.load(artifacts("tdn", "program"), extra_files=extra)
    meta = json.loads(extra["mlip_export.json"])
    model = models["tdn"][0]
    assert meta["cutoff"] == model.cutoff and meta["elements"] == list(model.config.elements)
    assert meta["family"] == "tdn" and meta["dtype"] == "float64" and meta["format"] == "program"
    assert meta["inputs"] == ["positions", "numbers", "cell", "pbc", "edge_index", "shifts", "charge", "spin"]
    assert meta["outputs"] == ["energy", "forces", "stress"]


def test_export_refuses_to_overwrite_and_bad_format_with_one_line(models, tmp_path):
    _, checkpoint = models["tdn"]
    out = tmp_path / "m.pt2"
    out.write_bytes(b"keep")
    result = mlip("export", checkpoint, out, "--format", "program")
    assert result.exit_code == 2 and "--overwrite" in result.output and len(result.output.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep"
    result = mlip("export", checkpoint, tmp_path / "n.pt2", "--format", "onnx")
    assert result.exit_code == 2 and "--format must be one of aoti, program" in result.output
    assert not (tmp_path / "n.pt2").exists()


def test_export_json_summary_and_float32(models, tmp_path):
    """--dtype float32 exports a float32 model (forces in float32, energy float64) that matches its Python twin."""
    _, checkpoint = models["gaunt"]
    out = tmp_path / "m32.pt2"
    result = mlip("export", checkpoint, out, "--format", "program", "--dtype", "float32", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["dtype"] == "float32" and summary["family"] == "gaunt" and summary["bytes"] == out.stat().st_size
    energy, forces, _ = _run_program(out, molecule("CH3OH"))
    assert energy.dtype == np.float64 and forces.dtype == np.float32
    want = python_model_outputs(load_model(checkpoint, dtype="float32"), molecule("CH3OH"))
    assert_relative(forces, want["forces"], rel=1e-5)


def test_aoti_without_a_compiler_says_so_in_one_line_and_writes_nothing(models, tmp_path):
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-c++"))}):
        result = mlip("export", models["tdn"][1], tmp_path / "m.pt2")
    assert result.exit_code == 2, result.output
    assert "C++ compiler" in result.output and "--format program" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_ensemble_exports_its_members_mean(models, artifacts):
    """The exported ensemble gives the mean of its members (each run alone as a plain model) and says so."""
    ensemble, _ = models["tdn-ensemble"]
    extra = {"mlip_export.json": ""}
    torch.export.load(artifacts("tdn-ensemble", "program"), extra_files=extra)
    assert json.loads(extra["mlip_export.json"])["ensemble"] == 2
    for atoms in structures().values():
        energy, forces, stress = _run_program(artifacts("tdn-ensemble", "program"), atoms)
        members = [python_model_outputs(ensemble.member(k), atoms) for k in range(2)]
        assert_relative(energy, np.mean([m["energy"] for m in members], axis=0))
        assert_relative(forces, np.mean([m["forces"] for m in members], axis=0))
        assert_relative(stress, np.mean([m["stress"] for m in members], axis=0))
        assert np.abs(members[0]["forces"] - members[1]["forces"]).max() > 1e-4  # the mean is not one member
