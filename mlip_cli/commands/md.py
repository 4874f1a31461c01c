"""``mlip md``: molecular dynamics of one structure with a trained model (NVE, NVT Langevin, NPT)."""

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


def md(
    structure: Annotated[Path, typer.Argument(help="Input: any ase.io file or a data set from `mlip data`.")],
    model: ModelPath,
    ensemble: Annotated[
        str, typer.Option(help="nve (velocity Verlet), nvt (Langevin) or npt (isotropic MTK).")
    ] = "nve",
    temperature: Annotated[
        float, typer.Option(min=0.0, help="Initial-velocity and thermostat temperature, K.")
    ] = 300.0,
    timestep: Annotated[float, typer.Option(help="Time step, fs.")] = 1.0,
    steps: Annotated[int, typer.Option(min=0, help="Number of steps.")] = 1000,
    index: Annotated[int, typer.Option(help="Which frame of the input to run (default: the first).")] = 0,
    friction: Annotated[float, typer.Option(help="Langevin friction, 1/fs (nvt).")] = 0.01,
    pressure: Annotated[float, typer.Option(help="Target pressure, GPa (npt).")] = 0.0,
    tdamp: Annotated[float | None, typer.Option(help="NPT thermostat time constant, fs (default 100 steps).")] = None,
    pdamp: Annotated[float | None, typer.Option(help="NPT barostat time constant, fs (default 1000 steps).")] = None,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of the Maxwell-Boltzmann initial velocities (drawn at --temperature) and of the Langevin noise."
        ),
    ] = 0,
    trajectory: Annotated[
        Path | None, typer.Option("--trajectory", "--traj", help="Trajectory file (.traj, else extended XYZ).")
    ] = None,
    trajectory_interval: Annotated[
        int, typer.Option("--trajectory-interval", "--traj-interval", min=1, help="Write a frame every N steps.")
    ] = 10,
    log: Annotated[Path | None, typer.Option(help="ASE MD log (time, energies per atom, temperature).")] = None,
    log_interval: Annotated[int, typer.Option(min=1, help="Log every N steps.")] = 10,
    out: Annotated[Path | None, typer.Option(help="Write the final frame here.")] = None,
    max_force: Annotated[float, typer.Option(help="Stop if a force exceeds this, eV/A.")] = 1000.0,
    max_temperature: Annotated[
        float | None,
        typer.Option(
            help="Stop if the temperature exceeds this, K (default: max(10 x --temperature, 5000 K)).", min=0.0
        ),
    ] = None,
    max_displacement: Annotated[
        float, typer.Option(help="Stop if an atom would move more than this in one step, A.", min=0.0)
    ] = 0.5,
    topology_interval: Annotated[
        int,
        typer.Option(
            min=0,
            help="Check the bond topology every N steps (0: never): an atom farther than 2 A from every other, or "
            "a covalent bond stretched beyond 1.5x its starting length (not when its atom is bonded to a new partner "
            "of the same element instead: a proton hop); the first change is reported in one line.",
        ),
    ] = 10,
    stop_on_dissociation: Annotated[
        bool, typer.Option(help="End the run (exit 0) at the first topology change; the frames so far are kept.")
    ] = False,
    max_uncertainty: Annotated[
        float | None,
        typer.Option(
            metavar="EV_PER_A",
            help="Ensemble models: end the run (exit 0) at the first step whose largest per-atom force "
            "uncertainty exceeds this, eV/A, and write that frame to --uncertain-frames.",
        ),
    ] = None,
    uncertain_frames: Annotated[
        Path | None,
        typer.Option(
            help="Extended XYZ for the frame that crossed --max-uncertainty, with its per-atom forces_uncertainty "
            "(default: <trajectory>.uncertain.extxyz next to --traj, else md.uncertain.extxyz here)."
        ),
    ] = None,
    device: Device = "cpu",
    dtype: Dtype = None,
    skin: Skin = 0.5,
    threads: Threads = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --trajectory, --log and --out if they exist.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run MD and report energy drift per atom per ps, steps/s and ns/day.

    Stops (exit 1, one line naming the step, quantity and limit; the trajectory keeps the frames before it) on
    NaN/inf, a force over --max-force, a temperature over --max-temperature or an atom moving more than
    --max-displacement in one step.

    Watches the bond topology (one line on the first change; --stop-on-dissociation ends the run there) and,
    with an ensemble model, logs the largest per-atom force uncertainty (--max-uncertainty ends the run there).
    A run ended on request exits 0 and its report says why; the frames up to that step are kept.
    """

    from ..calculator import MLIPCalculator
    from ..md import ENSEMBLES, MDFailure, run_md
    from ..models import is_ensemble
    from ..structures import check_cells, check_elements, read_structures
    from ..ui import console, err_console, print_json, progress, table

    ensemble = ensemble.lower()
    require_choice("--ensemble", ensemble, ENSEMBLES)
    require_positive("--timestep", timestep)
    if max_uncertainty is not None:
        require_positive("--max-uncertainty", max_uncertainty)
        if uncertain_frames is None:
            uncertain_frames = (
                trajectory.with_name(trajectory.stem + ".uncertain.extxyz")
                if trajectory is not None
                else Path("md.uncertain.extxyz")
            )
    elif uncertain_frames is not None:
        raise UsageError("--uncertain-frames needs --max-uncertainty")
    for option, path in (
        ("trajectory", trajectory),
        ("log", log),
        ("output", out),
        ("uncertain-frames", uncertain_frames),
    ):
        require_new_output(path, overwrite, option)
    set_threads(threads)
    frames = read_structures(structure)
    if not -len(frames) <= index < len(frames):
        raise UsageError(f"{structure}: --index {index} out of range for {len(frames)} frames")
    check_cells([frames[index]], structure, first=index % len(frames))
    calc = MLIPCalculator.from_checkpoint(model, device=device, dtype=dtype, skin=skin)
    check_elements([frames[index]], calc.model.config.elements, structure, first=index % len(frames))
    if max_uncertainty is not None and not is_ensemble(calc.model):
        raise UsageError(f"--max-uncertainty needs an ensemble model (model.ensemble > 1); {model} is a single model")
    atoms = frames[index].to_atoms()
    atoms.calc = calc
    try:
        with progress(f"md ({ensemble}, {len(atoms)} atoms)", steps) as update:
            report = run_md(
                atoms,
                ensemble,
                steps,
                timestep,
                temperature,
                friction_per_fs=friction,
                pressure_GPa=pressure,
                tdamp_fs=tdamp,
                pdamp_fs=pdamp,
                seed=seed,
                init_velocities=True,
                trajectory=trajectory,
                traj_interval=trajectory_interval,
                log=log,
                log_interval=log_interval,
                max_force=max_force,
                max_temperature=max_temperature,
                max_displacement=max_displacement,
                topology_interval=topology_interval,
                stop_on_topology_change=stop_on_dissociation,
                max_uncertainty=max_uncertainty,
                uncertain_frames=uncertain_frames,
                notify=lambda line: err_console.print(f"mlip md: {line}", highlight=False, markup=False),
                progress=update,
            )
    except MDFailure as err:  # the frames before the failure are kept; --out is not written
        typer.echo(f"mlip md: stopped: {err}", err=True)
        raise typer.Exit(1) from None
    if out is not None:
        from ase.io import write

        write(out, atoms)
    if as_json:
        print_json(report.as_dict())
        return
    drift_label = "energy drift (eV/atom/ps)" + ("" if ensemble == "nve" else ", thermostatted: not conserved")
    rows = [
        ["atoms", report.natoms],
        ["steps", report.steps],
        ["time step (fs)", report.timestep_fs],
        [drift_label, f"{report.energy_drift:.3e}"],
        ["max |E(t) - E(0)| (eV/atom)", f"{report.max_energy_deviation:.3e}"],
        ["mean temperature (K)", f"{report.mean_temperature:.1f}"],
        ["steps/s", f"{report.steps_per_second:.2f}"],
        ["ns/day", f"{report.ns_per_day:.4f}"],
        ["neighbour-list builds", report.neighbor_builds],
        ["wall time (s)", f"{report.seconds:.2f}"],
    ]
    if topology_interval > 0:
        change = report.topology_change
        rows.append(
            ["topology change", "none" if change is None else f"step {report.topology_change_step}: {change.kind}"]
        )
    if report.max_force_uncertainty is not None:
        rows.append(["max force uncertainty (eV/A)", f"{report.max_force_uncertainty:.4g}"])
    if report.stop_reason is not None:
        rows.append(["stopped at", report.stop_reason])
    console.print(table(f"md {ensemble} ({dtype or 'checkpoint dtype'}, {device})", ["quantity", "value"], rows))
