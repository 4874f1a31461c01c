"""``mlip export CHECKPOINT OUT``: a trained model as one ``.pt2`` file that plain torch loads (mlip_cli.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import Dtype, JsonSummary


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pt) or run directory (uses best.pt).")],
    out: Annotated[Path, typer.Argument(help="File to write (.pt2).")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="aoti: AOTInductor package, compiled for this CPU and torch (needs a C++ compiler to export); "
            "program: portable torch.export program, no compiler.",
        ),
    ] = "aoti",
    dtype: Dtype = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    as_json: JsonSummary = False,
) -> None:
    """Export a model that plain torch runs without mlip: energy, forces and stress of one structure per call.

    Inputs: positions (N,3), numbers (N,), cell (3,3), pbc (3,), edge_index (2,E), shifts (E,3) integer cell
    shifts, charge (), spin (); the caller builds the neighbour list (the cutoff is in the file's metadata).
    See the README section "Export".
    """
    from ..export import export_model
    from ..ui import console, print_json

    report = export_model(checkpoint, out, fmt=fmt, dtype=dtype, overwrite=overwrite)
    if as_json:
        print_json(report.as_dict())
        return
    console.print(
        f"exported {report.family} ({report.dtype}, cutoff {report.cutoff:g} A) as {report.format} to {report.path} "
        f"({report.bytes / 1e6:.1f} MB, {report.seconds:.0f} s)",
        highlight=False,
        soft_wrap=True,
    )
