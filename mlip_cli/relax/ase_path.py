"""Relax structures one by one with ASE's optimizers and :class:`~mlip_cli.calculator.MLIPCalculator`.

The path for BFGS (no batched version), for cell relaxation (``FrechetCellFilter``: its forces include the
cell forces, so convergence covers the cell too) and for anyone who asks for it. Fixed atoms become an ASE
``FixAtoms`` constraint, so the optimizer sees zero forces on them and ``set_positions`` never moves them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from mlip_datasets.record import Structure, is_periodic, stress_to_matrix

from ..calculator import MLIPCalculator
from .result import (
    CONVERGED,
    FAILED,
    NOT_CONVERGED,
    RelaxResult,
    RelaxSettings,
    failure_reason,
    finished_structure,
    fixed_mask,
    frame,
)

__all__ = ["relax_ase", "ASE_OPTIMIZERS", "ase_optimizer"]

ASE_OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")


def ase_optimizer(name: str):
    """The ASE optimizer class called ``name`` (FIRE, BFGS, LBFGS)."""
    from ase.optimize import BFGS, FIRE, LBFGS

    classes = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}
    if name.upper() not in classes:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(classes)}")
    return classes[name.upper()]


def _atoms(s: Structure, fixed: np.ndarray):
    from ase import Atoms
    from ase.constraints import FixAtoms

    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    if s.tags is not None:
        atoms.set_tags(s.tags)
    if fixed.any():
        atoms.set_constraint(FixAtoms(mask=fixed))
    for name in ("charge", "spin"):
        if getattr(s, name) is not None:
            atoms.info[name] = getattr(s, name)
    return atoms


def relax_one(calc: MLIPCalculator, s: Structure, index: int, settings: RelaxSettings) -> RelaxResult:
    """Relax one structure with an ASE optimizer (see :func:`relax_ase`)."""
    with warnings.catch_warnings():
        # FrechetCellFilter takes scipy's matrix logarithm of a near-identity deformation on every step, and
        # scipy warns about its accuracy each time (harmless at these tolerances): dozens of lines per structure
        warnings.filterwarnings("ignore", message="logm result may be inaccurate")
        return _relax_one(calc, s, index, settings)


def _relax_one(calc: MLIPCalculator, s: Structure, index: int, settings: RelaxSettings) -> RelaxResult:
    from ase.filters import FrechetCellFilter

    atoms = _atoms(s, fixed_mask(s, settings.fix_tags))
    atoms.calc = calc
    cell_dofs = settings.relax_cell and is_periodic(atoms.cell.array, atoms.pbc)
    target = FrechetCellFilter(atoms) if cell_dofs else atoms
    opt = ase_optimizer(settings.optimizer)(target, logfile=None, **settings.optimizer_options)
    frames: list[Structure] = []
    converged, fmax_now = False, float("nan")
    for converged in opt.irun(fmax=settings.fmax, steps=settings.steps):  # noqa: B007 (the last value is the verdict)
        energy = float(calc.results["energy"])
        forces = calc.results["forces"]
        gradient = target.get_forces()  # constrained; with the filter, the cell rows are included
        fmax_now = float(np.linalg.norm(gradient, axis=1).max()) if len(gradient) else 0.0
        reason = failure_reason(energy, forces, fmax_now if np.isfinite(fmax_now) else np.inf, settings.max_force)
        if reason:
            return RelaxResult(index, FAILED, opt.nsteps, None, None, None, f"{reason} at step {opt.nsteps}")
        if settings.trajectory:
            frames.append(frame(s, atoms.positions, atoms.cell.array, energy, forces, opt.nsteps))
    status = CONVERGED if converged else NOT_CONVERGED
    stress = None
    if cell_dofs:
        stress = stress_to_matrix(atoms.get_stress())
    final = finished_structure(
        s,
        atoms.positions,
        atoms.cell.array,
        calc.results["energy"],
        calc.results["forces"],
        stress,
        status,
        opt.nsteps,
        fmax_now,
    )
    return RelaxResult(
        index,
        status,
        opt.nsteps,
        float(calc.results["energy"]),
        fmax_now,
        final,
        trajectory=frames if settings.trajectory else None,
    )


def relax_ase(
    calc: MLIPCalculator,
    structures: Sequence[Structure],
    settings: RelaxSettings,
    progress: Callable[[int], None] | None = None,
) -> list[RelaxResult]:
    """Relax each structure with ASE's optimizer (``FIRE``, ``BFGS``, ``LBFGS``) and ``calc``.

    Args:
        calc: the calculator (one, reused: its neighbour list is rebuilt for each new structure).
        structures: inputs; ``fixed`` flags (and ``settings.fix_tags``) become ``FixAtoms``.
        settings: what to do; ``relax_cell`` wraps periodic structures in ``FrechetCellFilter`` (non-periodic ones
            relax at fixed cell) and a cell force above ``max_force`` fails the structure too.
        progress: called with the number of finished structures.
    """
    results = []
    for k, s in enumerate(structures):
        results.append(relax_one(calc, s, k, settings))
        if progress is not None:
            progress(k + 1)
    return results
