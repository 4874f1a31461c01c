"""``mlip eval CHECKPOINT DATA``: errors, per-element force errors, parity plot, equivariance error; for an
ensemble also the calibration of its uncertainty and a calibration plot."""

from __future__ import annotations

from pathlib import Path

import typer

from .options import EnergyKey, ForcesKey, StressKey, Threads, label_keys, set_threads


def evaluate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (.pt) or a run directory (uses best.pt)."),
    data: Path = typer.Argument(..., help="Data to score (any `mlip data` format) with energy/force labels."),
    batch_size: int = typer.Option(16, "--batch-size", help="Structures per model call."),
    limit: int | None = typer.Option(None, "--limit", help="Score only the first N structures."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 or float64 (default: as trained)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    rotations: int = typer.Option(3, "--rotations", help="Random rotations for the equivariance error (0: skip)."),
    parity: Path | None = typer.Option(
        None, "--parity", help="Parity-plot PNG path (default: <data name>_parity.png next to the checkpoint)."
    ),
    calibration: Path | None = typer.Option(
        None,
        "--calibration",
        help="Ensembles: calibration-plot PNG path (default: <data name>_calibration.png next to the checkpoint).",
    ),
    raw: bool = typer.Option(False, "--raw", help="Use the raw weights instead of the EMA weights."),
    frame_averaging: bool | None = typer.Option(
        None,
        "--frame-averaging/--no-frame-averaging",
        help="transip: average the energy over principal frames (exactly O(3)-invariant); default: as trained.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    energy_key: EnergyKey = None,
    forces_key: ForcesKey = None,
    stress_key: StressKey = None,
    threads: Threads = None,
    any_energy_kind: bool = typer.Option(
        False, "--any-energy-kind", help="Score energies of another kind than trained on (e.g. total vs adsorption)."
    ),
) -> None:
    """Score a trained model on a data set."""
    from ..checkpoint import load_model, trained_on
    from ..errors import UsageError
    from ..evaluation import check_energy_kind, evaluate_model, open_graphs
    from ..models import is_ensemble
    from ..train.metrics import QUANTITIES
    from ..train.plots import plot_parity
    from ..ui import console, print_json, progress, table
    from ..uncertainty import plot_calibration

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    set_threads(threads)
    model = load_model(checkpoint, device=device, dtype=dtype, use_ema=not raw)
    if calibration is not None and not is_ensemble(model):
        raise UsageError(f"--calibration needs an ensemble model (model.ensemble > 1); {checkpoint} holds one model")
    if frame_averaging is not None:
        if not hasattr(model.config, "frame_averaging") or model.config.family != "transip":
            raise UsageError(f"--frame-averaging applies to transip models, not {model.config.family!r}")
        model.config.frame_averaging = frame_averaging
    trained = trained_on(checkpoint)
    keys = label_keys(trained.keys, energy=energy_key, forces=forces_key, stress=stress_key)
    graphs = open_graphs(data, model.cutoff, model.dtype, limit, keys=keys)
    check_energy_kind(trained.energy_kind, graphs, data, allow=any_energy_kind)
    if len(graphs) == 0:
        raise UsageError(f"{data}: no structures to evaluate")
    if json_out:
        report = evaluate_model(model, graphs, batch_size, device, rotations=rotations)
    else:
        with progress(f"eval {data.name}", len(graphs)) as update:
            report = evaluate_model(model, graphs, batch_size, device, rotations=rotations, progress=update)
    if not report.metrics:
        raise UsageError(
            f"{data}: no energy or force labels to compare against (looked for {keys.energy!r} and "
            f"{keys.forces!r}; name them with --energy-key/--forces-key)"
        )
    ckpt_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    png = parity or ckpt_dir / f"{data.stem or data.name}_parity.png"
    plot_parity(report.parity, png, title=f"{checkpoint.name} on {data.name}")
    result = {"checkpoint": str(checkpoint), "data": str(data), **report.as_dict(), "parity_png": str(png)}
    calibration_png = None
    if report.calibration is not None:
        calibration_png = calibration or ckpt_dir / f"{data.stem or data.name}_calibration.png"
        plot_calibration(report.calibration, calibration_png, title=f"{checkpoint.name} on {data.name}")
        result["calibration_png"] = str(calibration_png)
    if json_out:
        print_json(result)
        return
    names = {"forces": "forces, free atoms" if "forces_all_mae" in report.metrics else "forces"}
    names["forces_all"] = "forces, all atoms"
    rows = [
        [f"{names.get(q, q)} ({u})", f"{report.metrics[q + '_mae']:.3f}", f"{report.metrics[q + '_rmse']:.3f}"]
        for q, u in QUANTITIES.items()
        if q + "_mae" in report.metrics
    ]
    console.print(table(f"{report.structures} structures, {report.atoms} atoms", ["quantity", "MAE", "RMSE"], rows))
    if report.per_element:
        from ase.data import chemical_symbols

        console.print(
            table(
                "force errors by element (meV/A)",
                ["element", "MAE", "RMSE", "components"],
                [
                    [chemical_symbols[z], f"{v['forces_mae']:.2f}", f"{v['forces_rmse']:.2f}", v["components"]]
                    for z, v in report.per_element.items()
                ],
            )
        )
    eq = report.equivariance
    if eq:
        for kind, what in (("rotation", f"{eq['rotations']} random rotations"), ("inversion", "r -> -r")):
            e = eq[kind]
            console.print(
                f"{kind} equivariance ({what}, {eq['structures']} structures): energy "
                f"{e['energy_mev_per_atom']:.2e} meV/atom, force relative {e['force_rel']:.2e}, "
                f"angle {e['force_angle_deg']:.2e} deg",
                highlight=False,
            )
    cal = report.calibration
    if cal is not None:
        energy_nll = "-" if cal.energy_nll is None else f"{cal.energy_nll:.3f}"
        console.print(
            table(
                f"uncertainty, {cal.members} members, {cal.structures} structures",
                ["statistic", "value"],
                [
                    ["Spearman: structure uncertainty vs force RMSE", f"{cal.spearman:.3f}"],
                    ["force NLL (eV/A components)", f"{cal.forces_nll:.3f}"],
                    ["energy NLL (eV/atom)", energy_nll],
                    ["miscalibration area (forces)", f"{cal.miscalibration_area:.3f}"],
                    ["ENCE (forces)", f"{cal.ence:.3f}"],
                    ["mean force std (meV/A)", f"{1000 * cal.mean_forces_std:.3f}"],
                ],
            )
        )
    console.print(f"parity plot: {png}", highlight=False)
    if calibration_png is not None:
        console.print(f"calibration plot: {calibration_png}", highlight=False)
