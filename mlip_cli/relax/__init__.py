"""Geometry relaxation: many structures batched on the model side, or one by one with ASE's optimizers.

    from mlip_cli.relax import relax_structures
    results = relax_structures(model, structures, optimizer="FIRE", fmax=0.05, steps=500)

:func:`relax_structures` picks the path: batched (:mod:`.batched`: one model call per step for a whole chunk
of structures, ASE's FIRE / L-BFGS rewritten over flat tensors) for FIRE and LBFGS at fixed cell, and the
per-structure ASE path (:mod:`.ase_path`) for BFGS, for cell relaxation, or when ``batched=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .result import CONVERGED, DEFAULT_MAX_FORCE, FAILED, NOT_CONVERGED, RelaxResult, RelaxSettings, fixed_mask

__all__ = [
    "relax_structures",
    "uses_batched",
    "RelaxResult",
    "RelaxSettings",
    "CONVERGED",
    "NOT_CONVERGED",
    "FAILED",
    "DEFAULT_MAX_FORCE",
    "fixed_mask",
]


def uses_batched(optimizer: str, relax_cell: bool, batched: bool | None = None) -> bool:
    """Whether :func:`relax_structures` takes the batched path for these options."""
    from .optimizers import OPTIMIZERS

    possible = optimizer.upper() in OPTIMIZERS and not relax_cell
    return possible if batched is None else (bool(batched) and possible)


def relax_structures(
    model,
    structures: Sequence,
    optimizer: str = "FIRE",
    fmax: float = 0.05,
    steps: int = 500,
    *,
    relax_cell: bool = False,
    batched: bool | None = None,
    fix_tags: tuple[int, ...] = (),
    max_force: float = DEFAULT_MAX_FORCE,
    skin: float | None = None,
    batch_atoms: int = 4096,
    trajectory: bool = False,
    optimizer_options: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[RelaxResult]:
    """Relax every structure; one :class:`RelaxResult` per input, in order.

    Args:
        model: an mlip model in eval mode (``mlip_cli.checkpoint.load_model``).
        structures: :class:`mlip_datasets.record.Structure` records.
        optimizer: ``"FIRE"``, ``"BFGS"`` or ``"LBFGS"``.
        fmax: force threshold (eV/A); with ``relax_cell`` the cell forces count too.
        steps: at most this many optimizer steps per structure.
        relax_cell: relax the cell of periodic structures too (ASE ``FrechetCellFilter``, per structure).
        batched: None picks the batched path where it exists (FIRE, LBFGS at fixed cell); False forces ASE.
        fix_tags: also fix atoms with these tags (e.g. ``(0,)`` for OC20 sub-surface atoms).
        max_force: forces above this (eV/A) mark a structure as failed; it is reported, not written.
        skin: neighbour-list skin (A; default :data:`mlip_cli.calculator.DEFAULT_SKIN`).
        batch_atoms: at most this many atoms per model call on the batched path.
        trajectory: keep every evaluated frame.
        optimizer_options: optimizer keyword arguments (``maxstep``, ...).
        progress: called with the number of finished structures.
    """
    from ..calculator import DEFAULT_SKIN

    skin = DEFAULT_SKIN if skin is None else skin
    settings = RelaxSettings(
        optimizer, fmax, steps, relax_cell, tuple(fix_tags), max_force, trajectory, dict(optimizer_options or {})
    )
    if uses_batched(optimizer, relax_cell, batched):
        from .batched import relax_batched

        return relax_batched(model, structures, settings, skin=skin, batch_atoms=batch_atoms, progress=progress)
    from ..calculator import MLIPCalculator
    from .ase_path import relax_ase

    return relax_ase(MLIPCalculator(model, skin=skin), structures, settings, progress=progress)
