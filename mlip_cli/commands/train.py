"""``mlip train RECIPE``: thin wrapper over :mod:`mlip_cli.train`."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import typer

from .options import EnergyKey, ForcesKey, StressKey, Threads, given_keys


def train(
    recipe: str | None = typer.Argument(
        None,
        help="Recipe YAML file, or a shipped recipe name (tdn-tiny, "
        "gaunt-tiny, cg-tiny, acac/tdn, ...). Optional with --resume.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Training data (any `mlip data` format); overrides data.train."
    ),
    valid_data: Path | None = typer.Option(None, "--valid-data", help="Validation data; overrides data.valid."),
    test_data: Path | None = typer.Option(None, "--test-data", help="Test data, scored at the end."),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        help="Override a recipe value: section.key=value "
        "(repeatable), e.g. --set optim.lr=1e-3 --set model.channels=32.",
    ),
    time_budget: str | None = typer.Option(
        None, "--time-budget", help="Wall-clock training budget, e.g. 20m, 1h, 90s (validation time not counted)."
    ),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory from its last.pt."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (default: runs/<recipe name>)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or status lines."),
    energy_key: EnergyKey = None,
    forces_key: ForcesKey = None,
    stress_key: StressKey = None,
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or auto; overrides run.device."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 or float64; overrides run.dtype."),
    threads: Threads = None,
) -> None:
    """Train a potential; writes best.pt, last.pt, metrics.csv, recipe.yaml, result.yaml and learning_curve.png."""
    from ..train import RecipeSettings, plan_run, run_training
    from ..train.trainer import TrainingInterrupted
    from ..ui import err_console

    keys = given_keys(energy=energy_key, forces=forces_key, stress=stress_key)
    settings = RecipeSettings(
        train=data,
        valid=valid_data,
        test=test_data,
        time_budget=time_budget,
        keys=keys,
        device=device,
        dtype=dtype,
        threads=threads,
    )
    plan = plan_run(recipe, resume=resume, out=out, overrides=overrides, settings=settings)
    for note in plan.notes:
        err_console.print(note)
    log = None if quiet else (lambda msg: err_console.print(msg, highlight=False))
    try:
        result = run_training(
            plan.recipe,
            plan.run_dir,
            resume=plan.resume,
            log=log,
            progress_factory=None if quiet else _progress_factory,
        )
    except TrainingInterrupted as stop:
        # one line (rank 0 only), even with --quiet; 128 + signal number, the shell's code for a run killed by it
        if stop.is_main:
            err_console.print(
                f"mlip: {signal.Signals(stop.signum).name} at step {stop.step}: saved {stop.checkpoint}; "
                f"continue with: mlip train --resume {plan.run_dir}",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(128 + stop.signum) from None
    if result.is_main:  # with torchrun every process returns; rank 0 reports
        _report(result, plan.recipe)


def _report(result, recipe) -> None:
    from ..ui import console, table

    rows = []
    for name, metrics in (("valid", result.valid), ("test", result.test)):
        if metrics:
            rows.append(
                [
                    name,
                    *(
                        f"{metrics.get(k, float('nan')):.3f}"
                        for k in ("energy_per_atom_mae", "energy_per_atom_rmse", "forces_mae", "forces_rmse")
                    ),
                ]
            )
    console.print(
        table(
            f"{recipe.name}: {result.steps} steps, stopped by {result.stop_reason} "
            f"(best EMA weights in {result.run_dir}/best.pt)",
            ["set", "E MAE meV/atom", "E RMSE meV/atom", "F MAE meV/A", "F RMSE meV/A"],
            rows,
        )
    )
    t = result.timing
    console.print(
        f"time: {t['train_s']:.1f} s training ({t['data_s']:.1f} s data, {t['compute_s']:.1f} s compute), "
        f"{t['valid_s']:.1f} s validation; {t['structures_per_s']:.1f} structures/s, "
        f"{t['step_ms']:.1f} ms/step compute",
        highlight=False,
    )


@contextlib.contextmanager
def _progress_factory(total, unit: str):
    """A rich bar over steps (or seconds of the time budget) with loss, validation error and throughput."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..ui import err_console

    columns = [
        TextColumn("[bold]train" if unit in ("steps", "s") else f"[bold]{unit}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    fields = {"loss": None, "valid": None, "rate": None}
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task("train", total=total, info="")
        last = [0.0]

        def update(completed=None, **values) -> None:
            fields.update({k: v for k, v in values.items() if v is not None})
            now = time.monotonic()
            if completed is None or (now - last[0] < 0.2 and completed != total):
                return
            last[0] = now
            info = []
            if fields["loss"] is not None:
                info.append(f"loss {fields['loss']:.3g}")
            if fields["valid"] is not None:
                info.append(f"val F {fields['valid']:.1f} meV/A")
            if fields["rate"] is not None:
                info.append(f"{fields['rate']:.1f} str/s")
            bar.update(task, completed=completed, info="  ".join(info))

        yield update
