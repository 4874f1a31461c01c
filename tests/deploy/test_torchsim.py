"""TorchSim model interface: TorchSim's own validator, batched results equal to the ASE calculator's per
structure, batched NVE equal to ASE's velocity Verlet, and a batched FIRE relaxation that converges."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE
from ase.units import fs, kB
from tiny_models import tiny_config

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.checkpoint import save_checkpoint
from mlip_cli.models import build_model

ts = pytest.importorskip("torch_sim", reason="TorchSim is the optional `torchsim` extra and is not installed")
from torch_sim.models.interface import validate_model_outputs  # noqa: E402
from torch_sim.units import MetalUnits  # noqa: E402

from mlip_cli.torchsim import MLIPModel  # noqa: E402

# H C N O for the molecules; Si, Fe for TorchSim's validator; Cu, Au for the bulk cells
ELEMENTS = [1, 6, 7, 8, 14, 26, 29, 79]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    """Untrained tdn (8 channels, L = 1) in float64."""
    torch.manual_seed(0)
    net = build_model(tiny_config("tdn", lmax=1, elements=ELEMENTS), dtype=torch.float64)
    net.set_statistics(e0s={1: -1.0, 8: -2.0, 29: -3.0})
    return net.eval()


def molecules() -> list[Atoms]:
    """Three molecules of 6, 12 and 3 atoms, rattled, without a cell."""
    out = [molecule(name) for name in ("CH3OH", "C6H6", "H2O")]
    for seed, atoms in enumerate(out):
        atoms.rattle(0.05, seed=seed)
    return out


def crystals() -> list[Atoms]:
    """Three periodic cells of 4 (triclinic Cu with one Au), 4 (cubic Cu) and 8 (diamond Si) atoms, rattled."""
    cu_au = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    cu_au.numbers[1] = 79
    out = [cu_au, bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Si", "diamond", a=5.43, cubic=True)]
    for seed, atoms in enumerate(out):
        atoms.rattle(0.05, seed=seed)
    return out


def state_of(atoms: list[Atoms], ts_model: MLIPModel):
    return ts.io.atoms_to_state(atoms, ts_model.device, ts_model.dtype)


def assert_relative(got, want, rel: float = 1e-10) -> None:
    """``got`` equals ``want`` to ``rel`` of the largest entry of ``want``."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * max(float(np.abs(want).max()), 1e-300))


def test_torchsim_validator_accepts_the_model(model):
    ts_model = MLIPModel(model)
    validate_model_outputs(ts_model, CPU, torch.float64)
    assert (ts_model.device, ts_model.dtype, ts_model.compute_forces, ts_model.compute_stress) == (
        CPU,
        torch.float64,
        True,
        True,
    )


@pytest.mark.parametrize("make", [molecules, crystals])
def test_batched_results_equal_the_ase_calculator_per_structure(model, make):
    ts_model = MLIPModel(model)
    systems = make()
    state = state_of(systems, ts_model)
    positions = state.positions.clone()
    out = ts_model(state)
    assert torch.equal(state.positions, positions)  # the state is not modified
    assert out["energy"].shape == (3,) and out["forces"].shape == (len(positions), 3)
    assert out["stress"].shape == (3, 3, 3)
    start = 0
    for b, atoms in enumerate(systems):
        atoms.calc = MLIPCalculator(model)
        stop = start + len(atoms)
        assert_relative(out["energy"][b].item(), atoms.get_potential_energy())
        assert_relative(out["forces"][start:stop].numpy(), atoms.get_forces())
        if atoms.pbc.any():
            assert_relative(out["stress"][b].numpy(), atoms.get_stress(voigt=False))
        else:  # no cell: zero, as the model gives for non-periodic structures (ASE has no stress for them)
            assert not out["stress"][b].any()
        start = stop


def test_checkpoint_path_and_dict_state_give_the_same_results(model, tmp_path):
    path = save_checkpoint(
        tmp_path / "tiny.pt",
        {"model_config": model.config.to_dict(), "dtype": "float64", "model_state": model.state_dict()},
    )
    from_path = MLIPModel(path, compute_stress=False)
    assert from_path.dtype == torch.float64 and not from_path.compute_stress
    state = state_of(crystals(), from_path)
    out = from_path(
        {k: getattr(state, k) for k in ("positions", "masses", "cell", "pbc", "atomic_numbers", "system_idx")}
    )
    want = MLIPModel(model)(state)
    assert "stress" not in out
    assert torch.equal(out["energy"], want["energy"]) and torch.equal(out["forces"], want["forces"])


def test_a_structure_with_nan_positions_gets_nan_and_leaves_the_others_alone(model):
    ts_model = MLIPModel(model)
    systems = molecules()
    want = ts_model(state_of(systems, ts_model))
    state = state_of(systems, ts_model)
    first = len(systems[0])
    state.positions[first] = float("nan")  # an atom of the second molecule
    second = slice(first, first + len(systems[1]))
    out = ts_model(state)
    assert torch.isnan(out["energy"][1]) and torch.isnan(out["forces"][second]).all()
    keep = torch.ones(len(state.positions), dtype=torch.bool)
    keep[second] = False
    # the same to rounding (the batch's edge order differs without the NaN atom's edges; measured 1e-15)
    assert_relative(out["energy"][[0, 2]], want["energy"][[0, 2]], rel=1e-12)
    assert_relative(out["forces"][keep], want["forces"][keep], rel=1e-12)


@pytest.mark.parametrize("make", [molecules, crystals])
def test_batched_nve_follows_ase_velocity_verlet(model, make):
    """20 steps of 1 fs from the same velocities: TorchSim's timestep is ``ps * MetalUnits.time``, the same
    internal unit (sqrt(amu A^2 / eV)) as ASE's ``units.fs``; its momenta are ASE's (amu A per that unit)."""
    steps, dt = 20, 1e-3 * MetalUnits.time  # 1 fs the way ts.integrate converts its timestep (ps)
    assert dt == pytest.approx(fs, rel=1e-12)
    systems = make()
    for seed, atoms in enumerate(systems):
        sigma = np.sqrt(atoms.get_masses()[:, None] * kB * 1500)  # Maxwell-Boltzmann momenta at 1500 K
        atoms.set_momenta(np.random.default_rng(seed).normal(size=(len(atoms), 3)) * sigma)
    # a smaller skin than the calculator's: the two sides rebuild their lists at different steps
    ts_model = MLIPModel(model, compute_stress=False, skin=0.05)
    initial = [a.positions.copy() for a in systems]
    init, update = ts.nve(ts_model, dt=torch.tensor(dt, dtype=torch.float64), kT=torch.tensor(0.0))
    state = init(state_of(systems, ts_model))
    state.momenta = torch.as_tensor(np.concatenate([a.get_momenta() for a in systems]))
    for _ in range(steps):
        state = update(state)
    assert ts_model.model_calls == steps + 1
    start = 0
    for b, atoms in enumerate(systems):
        atoms.calc = MLIPCalculator(model)
        VelocityVerlet(atoms, timestep=1 * fs, logfile=None).run(steps)
        assert np.abs(atoms.positions - initial[b]).max() > 0.1  # the atoms really moved
        stop = start + len(atoms)
        got = state.positions[start:stop].numpy()
        delta = got - atoms.positions
        if atoms.pbc.all():  # TorchSim wraps positions into the cell, ASE does not: compare modulo the lattice
            frac = np.linalg.solve(atoms.cell.array.T, delta.T).T
            delta = (frac - np.round(frac)) @ atoms.cell.array
        assert np.abs(delta).max() < 1e-6
        np.testing.assert_allclose(state.momenta[start:stop].numpy(), atoms.get_momenta(), rtol=0, atol=1e-6)
        assert state.energy[b].item() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        start = stop


def test_batched_fire_converges_to_the_minima_ase_fire_finds(model):
    """TorchSim's FIRE (ASE flavour) on three cells at once, converged structures leaving the batch as they
    finish: every structure ends below fmax by the ASE calculator's forces, at ASE FIRE's minimum."""
    fmax = 0.05
    ts_model = MLIPModel(model, compute_stress=False)
    start_state = state_of(crystals(), ts_model)
    final = ts.optimize(
        start_state,
        ts_model,
        optimizer=ts.optimizers.fire,
        convergence_fn=ts.generate_force_convergence_fn(fmax, include_cell_forces=False),
        max_steps=300,
    )
    for b, atoms in enumerate(crystals()):
        relaxed = atoms.copy()
        relaxed.positions = final.positions[final.system_idx == b].numpy()
        relaxed.calc = MLIPCalculator(model)
        assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < fmax
        atoms.calc = MLIPCalculator(model)
        start_energy = atoms.get_potential_energy()
        assert FIRE(atoms, logfile=None).run(fmax=fmax, steps=300)
        assert relaxed.get_potential_energy() < start_energy - 0.01
        # both stop within fmax of the same minimum: their energies differ by far less than the descent
        assert relaxed.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=2e-3)


def test_import_mlip_cli_does_not_import_torchsim():
    code = (
        "import sys, mlip_cli; assert 'MLIPModel' in dir(mlip_cli); assert 'torch_sim' not in sys.modules; "
        "from mlip_cli import MLIPModel; assert 'torch_sim' in sys.modules; print(MLIPModel.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "mlip_cli.torchsim"
