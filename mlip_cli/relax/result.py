"""What a relaxation returns per structure, and the checks shared by both relaxation paths."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlip_datasets.record import Structure

__all__ = [
    "RelaxSettings",
    "RelaxResult",
    "CONVERGED",
    "NOT_CONVERGED",
    "FAILED",
    "DEFAULT_MAX_FORCE",
    "fixed_mask",
    "failure_reason",
    "finished_structure",
    "frame",
]

CONVERGED, NOT_CONVERGED, FAILED = "converged", "not converged", "failed"

#: A force above this (eV/A) on a free atom means the structure exploded: no real geometry gets there.
DEFAULT_MAX_FORCE = 1000.0


@dataclass(frozen=True)
class RelaxSettings:
    """What both relaxation paths are asked to do (the per-structure options of ``relax_structures``).

    Attributes:
        optimizer: ``"FIRE"``, ``"BFGS"`` or ``"LBFGS"`` (ASE's algorithms and defaults).
        fmax: converged when every free atom (and, with ``relax_cell``, every cell force) is below this, eV/A.
        steps: at most this many optimizer steps per structure.
        relax_cell: relax the cell of periodic structures too (ASE ``FrechetCellFilter``, per structure).
        fix_tags: also fix atoms with these tags (e.g. ``(0,)`` for OC20 sub-surface atoms).
        max_force: a force above this (eV/A) marks a structure as failed (exploded); it is reported, not written.
        trajectory: keep every evaluated frame in the results.
        optimizer_options: keyword arguments of the optimizer (``maxstep``, ``dt``, ``memory``, ...).
    """

    optimizer: str = "FIRE"
    fmax: float = 0.05
    steps: int = 500
    relax_cell: bool = False
    fix_tags: tuple[int, ...] = ()
    max_force: float = DEFAULT_MAX_FORCE
    trajectory: bool = False
    optimizer_options: dict = field(default_factory=dict)


@dataclass
class RelaxResult:
    """One structure's relaxation.

    Attributes:
        index: position of the structure in the input.
        status: ``"converged"``, ``"not converged"`` (ran out of steps) or ``"failed"`` (NaN/exploding).
        steps: optimizer steps taken (model calls minus one, as ASE counts ``nsteps``).
        energy: final energy (eV); None when failed.
        fmax: final largest force on a free atom (eV/A; with a cell filter, cell forces included).
        structure: the final frame with energy/forces (and stress after a cell relaxation) and
            ``info["relax_converged"|"relax_steps"|"relax_fmax"]``; None when failed (nothing garbage goes out).
        message: why it failed.
        trajectory: every evaluated frame (when asked for); None when failed or not asked.
    """

    index: int
    status: str
    steps: int
    energy: float | None
    fmax: float | None
    structure: Structure | None
    message: str = ""
    trajectory: list[Structure] | None = field(default=None, repr=False)

    @property
    def converged(self) -> bool:
        return self.status == CONVERGED


def fixed_mask(s: Structure, fix_tags: tuple[int, ...] = ()) -> np.ndarray:
    """Atoms that must not move: ``Structure.fixed`` (FixAtoms, OC20 ``fixed``/``move_mask``), plus every atom
    whose tag is in ``fix_tags`` (e.g. ``(0,)``: OC20 sub-surface atoms). Shapes: -> (N,) bool."""
    mask = np.zeros(s.natoms, dtype=bool) if s.fixed is None else s.fixed.copy()
    if fix_tags and s.tags is not None:
        mask |= np.isin(s.tags, list(fix_tags))
    return mask


def failure_reason(energy: float, forces: np.ndarray, fmax: float, max_force: float) -> str:
    """Empty when the evaluation looks sane, else one line saying what went wrong."""
    if not np.isfinite(energy) or not np.isfinite(forces).all():
        return "energy or forces became NaN/inf"
    if fmax > max_force:
        return f"forces exploded (max |F| = {fmax:.3g} eV/A > {max_force:g})"
    return ""


def finished_structure(
    s: Structure,
    positions: np.ndarray,
    cell: np.ndarray,
    energy: float,
    forces: np.ndarray,
    stress: np.ndarray | None,
    status: str,
    steps: int,
    fmax: float,
) -> Structure:
    """The output frame: input metadata (tags, fixed, charge, spin, sid, info) with the new geometry and the
    model's labels (raw forces, not constrained). Old labels of the input are replaced, never kept."""
    info = {**s.info, "relax_converged": status == CONVERGED, "relax_steps": int(steps), "relax_fmax": float(fmax)}
    return s.replace(
        positions=np.array(positions, dtype=np.float64),
        cell=np.array(cell, dtype=np.float64),
        energy=float(energy),
        forces=np.array(forces, dtype=np.float64),
        stress=None if stress is None else np.array(stress, dtype=np.float64),
        info=info,
    )


def frame(
    s: Structure, positions: np.ndarray, cell: np.ndarray, energy: float, forces: np.ndarray, step: int
) -> Structure:
    """One trajectory frame."""
    return s.replace(
        positions=np.array(positions, dtype=np.float64),
        cell=np.array(cell, dtype=np.float64),
        energy=float(energy),
        forces=np.array(forces, dtype=np.float64),
        stress=None,
        info={**s.info, "relax_step": int(step)},
    )
