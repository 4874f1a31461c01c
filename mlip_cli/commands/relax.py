"""``mlip relax``: relax every structure of a file or data set with a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .options import (
    Device,
    Dtype,
    ModelPath,
    Skin,
    Threads,
    require_choice,
    require_new_output,
    require_positive,
    set_threads,
)

OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
_MAX_TABLE_ROWS = 50


def _parse_tags(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--fix-tags must be comma-separated integers, got {text!r}") from None


def _formula(s) -> str:
    from ase.symbols import Symbols

    return Symbols(s.numbers).get_chemical_formula() if s.natoms else "-"


def relax(
    structures: Annotated[
        Path,
        typer.Argument(help="Input: any ase.io file (every frame is relaxed) or a data set written by `mlip data`."),
    ],
    model: ModelPath,
    optimizer: Annotated[str, typer.Option(help="FIRE, BFGS or LBFGS (ASE's algorithms and defaults).")] = "FIRE",
    fmax: Annotated[
        float,
        typer.Option(
            help="Converged when every free atom (and, with --relax-cell, every cell force) is below this, eV/A."
        ),
    ] = 0.05,
    steps: Annotated[int, typer.Option(min=0, help="At most this many optimizer steps per structure.")] = 500,
    relax_cell: Annotated[
        bool,
        typer.Option(
            "--relax-cell", help="Relax the cell of periodic structures too (ASE FrechetCellFilter, one by one)."
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Output file or data set for the final frames (default: INPUT_relaxed.extxyz).")
    ] = None,
    trajectory: Annotated[
        Path | None, typer.Option(help="Also write each structure's frames to DIR/<index>.extxyz.")
    ] = None,
    batched: Annotated[
        bool,
        typer.Option(
            "--batched/--one-by-one",
            help="FIRE/LBFGS at fixed cell: relax many structures per model call (default), or one by one with ASE.",
        ),
    ] = True,
    batch_atoms: Annotated[int, typer.Option(min=1, help="At most this many atoms per batched model call.")] = 4096,
    fix_tags: Annotated[
        str | None, typer.Option(help="Also fix atoms with these tags, e.g. 0 for OC20 sub-surface atoms.")
    ] = None,
    max_force: Annotated[
        float,
        typer.Option(
            help="A force above this (eV/A) marks the structure as failed (exploded); it is reported and not written."
        ),
    ] = 1000.0,
    device: Device = "cpu",
    dtype: Dtype = None,
    skin: Skin = 0.5,
    threads: Threads = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out and --trajectory if they exist.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-structure results as JSON.")] = False,
) -> None:
    """Relax every structure in STRUCTURES; exit code 0 only if all converged (1 otherwise)."""
    import time

    from mlip_datasets.io import write_dataset

    from ..checkpoint import load_model
    from ..relax import CONVERGED, FAILED, relax_structures, uses_batched
    from ..structures import check_cells, check_elements, read_structures
    from ..ui import console, err_console, print_json, progress, table

    optimizer = optimizer.upper()
    require_choice("--optimizer", optimizer, OPTIMIZERS)
    require_positive("--fmax", fmax)
    tags = _parse_tags(fix_tags)
    out = out or structures.with_name(structures.name.split(".")[0] + "_relaxed.extxyz")
    require_new_output(out, overwrite)
    require_new_output(trajectory, overwrite, "trajectory folder")
    set_threads(threads)
    frames = read_structures(structures)
    check_cells(frames, structures)
    net = load_model(model, device=device, dtype=dtype)
    check_elements(frames, net.config.elements, structures)

    path = ("batched " if uses_batched(optimizer, relax_cell, batched) else "ASE ") + optimizer
    start = time.perf_counter()
    with progress(f"relaxing ({path})", len(frames)) as update:
        results = relax_structures(
            net,
            frames,
            optimizer,
            fmax,
            steps,
            relax_cell=relax_cell,
            batched=batched,
            fix_tags=tags,
            max_force=max_force,
            skin=skin,
            batch_atoms=batch_atoms,
            trajectory=trajectory is not None,
            progress=update,
        )
    elapsed = time.perf_counter() - start

    good = [r for r in results if r.structure is not None]
    if good:
        write_dataset(out, (r.structure for r in good), overwrite=overwrite)
    if trajectory is not None:
        for r in good:
            write_dataset(trajectory / f"{r.index:06d}.extxyz", r.trajectory, overwrite=True)

    counts = {status: sum(r.status == status for r in results) for status in (CONVERGED, "not converged", FAILED)}
    if as_json:
        print_json(
            {
                "input": str(structures),
                "output": str(out) if good else None,
                "optimizer": path,
                "seconds": elapsed,
                **{k.replace(" ", "_"): v for k, v in counts.items()},
                "results": [
                    {
                        "index": r.index,
                        "status": r.status,
                        "steps": r.steps,
                        "energy": r.energy,
                        "fmax": r.fmax,
                        "message": r.message,
                    }
                    for r in results
                ],
            }
        )
    else:
        shown = (
            results
            if len(results) <= _MAX_TABLE_ROWS
            else [r for r in results if r.status != CONVERGED][:_MAX_TABLE_ROWS]
        )
        rows = [
            [
                r.index,
                _formula(frames[r.index]),
                r.status if not r.message else f"{r.status}: {r.message}",
                r.steps,
                "-" if r.energy is None else f"{r.energy:.4f}",
                "-" if r.fmax is None else f"{r.fmax:.4f}",
            ]
            for r in shown
        ]
        title = f"relaxation ({path}, fmax {fmax} eV/A)" + (
            "" if len(shown) == len(results) else f": the first {len(shown)} not converged"
        )
        if rows:
            console.print(table(title, ["#", "formula", "status", "steps", "energy (eV)", "max force (eV/A)"], rows))
        console.print(
            f"{counts[CONVERGED]} converged, {counts['not converged']} not converged, {counts[FAILED]} "
            f"failed, in {elapsed:.1f} s; "
            + (f"wrote {len(good)} final frames to {out}" if good else "nothing written"),
            highlight=False,
        )
    for r in results:
        if r.status == FAILED:
            err_console.print(f"structure {r.index} skipped: {r.message}", highlight=False)
    if counts[CONVERGED] != len(results):
        raise typer.Exit(1)
