"""Builders for the ASE-integration tests (imported by name: tests/ase is on sys.path under pytest)."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule
from tiny_models import CUTOFF, ELEMENTS, tiny_config  # noqa: F401  (re-exported to the ASE tests)

from mlip_cli.checkpoint import save_checkpoint
from mlip_cli.models import build_model, registered_families

FAMILIES = registered_families()  # every registered family: cg, gaunt, tdn, transip (and any added later)


def tiny_model(family: str = "tdn", dtype: torch.dtype = torch.float64, seed: int = 0, **changes):
    """An untrained model, 8 channels, L = 1, 2 interactions (fast), in eval mode."""
    cfg = tiny_config(family, lmax=1, avg_num_neighbors=10.0, **changes)
    torch.manual_seed(seed)
    model = build_model(cfg, dtype=dtype)
    model.set_statistics(e0s={1: -1.0, 8: -2.0, 29: -3.0})
    return model.eval()


def write_checkpoint(path, model, dtype: str = "float64"):
    """A checkpoint as the trainer writes it (no EMA, no train state)."""
    return save_checkpoint(
        path,
        {"model_config": model.config.to_dict(), "dtype": dtype, "model_state": model.state_dict(), "ema_state": None},
    )


def periodic_bulk() -> Atoms:
    """Triclinic (primitive fcc) Cu with one Au, rattled: periodic along x, y, z."""
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    atoms.numbers[1] = 79
    atoms.rattle(0.08, seed=0)
    return atoms


def slab() -> Atoms:
    """A small Cu(111) slab with an O adatom: periodic along x, y only (mixed boundary conditions)."""
    from ase.build import add_adsorbate, fcc111

    atoms = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    add_adsorbate(atoms, "O", 1.5, "fcc")
    atoms.pbc = (True, True, False)
    atoms.rattle(0.05, seed=1)
    return atoms


def wire() -> Atoms:
    """A zig-zag Cu/Ni chain periodic along x only."""
    atoms = Atoms(
        "CuNiCu",
        positions=[[0.0, 0.0, 0.0], [1.3, 1.2, 0.1], [2.6, 0.1, -0.1]],
        cell=[3.9, 12.0, 12.0],
        pbc=(True, False, False),
    )
    atoms.rattle(0.05, seed=2)
    return atoms


def mol() -> Atoms:
    """Methanol, rattled: not periodic."""
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=3)
    return atoms


STRUCTURES = {"bulk": periodic_bulk, "slab": slab, "wire": wire, "molecule": mol}


def overlapping() -> Atoms:
    """Two atoms on the same spot: the model's radial basis is 0/0 there, so energy and forces are NaN."""
    return Atoms("OH2", positions=[[0, 0, 0], [0, 0, 0], [0.0, 0.8, 0.6]])


def finite_difference_forces(atoms, calc, atoms_to_check, h: float = 1e-5) -> np.ndarray:
    """Central differences of the energy with respect to the coordinates of ``atoms_to_check``.

    Shapes: -> (len(atoms_to_check), 3)."""
    out = np.zeros((len(atoms_to_check), 3))
    for row, i in enumerate(atoms_to_check):
        for k in range(3):
            e = []
            for sign in (1, -1):
                a = atoms.copy()
                a.positions[i, k] += sign * h
                a.calc = calc
                e.append(a.get_potential_energy())
            out[row, k] = -(e[0] - e[1]) / (2 * h)
    return out


def finite_strain_stress(atoms, calc, h: float = 1e-5) -> np.ndarray:
    """Voigt stress ``(1/V) dE/d(strain)`` by central differences of symmetric strains (xx yy zz yz xz xy)."""
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    volume = atoms.get_volume()
    out = np.zeros(6)
    for v, (i, j) in enumerate(pairs):
        e = []
        for sign in (1, -1):
            strain = np.zeros((3, 3))
            strain[i, j] += 0.5 * sign * h
            strain[j, i] += 0.5 * sign * h
            a = atoms.copy()
            a.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
            a.calc = calc
            e.append(a.get_potential_energy())
        # d/dh of E(I + h S_ij): S_ij has 1/2 at (i,j) and (j,i), so this is V * sigma_ij for every pair
        out[v] = (e[0] - e[1]) / (2 * h) / volume
    return out
