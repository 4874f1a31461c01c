"""``mlip predict MODEL DATA --out FILE``: single-point energy, forces and stress for every structure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import BatchAtoms, Device, Dtype, JsonSummary, Overwrite, Threads, set_threads


def predict(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.pt) or run directory (uses best.pt).")],
    data: Annotated[Path, typer.Argument(help="Structures: any ase.io file or a data set `mlip data` reads.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file or data set (any format `mlip data convert` writes).")
    ],
    fmt: Annotated[str | None, typer.Option("--from", help="Input format (default: detected).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Output format (default: from the extension).")] = None,
    energy_key: Annotated[
        str, typer.Option("--energy-key", help="extxyz: info key of the predicted energy (MACE: MACE_energy).")
    ] = "energy",
    forces_key: Annotated[
        str, typer.Option("--forces-key", help="extxyz: per-atom array of the predicted forces (MACE: MACE_forces).")
    ] = "forces",
    stress_key: Annotated[
        str, typer.Option("--stress-key", help="extxyz: info key of the predicted stress (MACE: MACE_stress).")
    ] = "stress",
    batch_atoms: BatchAtoms = 4096,
    device: Device = "cpu",
    dtype: Dtype = None,
    threads: Threads = None,
    overwrite: Overwrite = False,
    as_json: JsonSummary = False,
) -> None:
    """Predict energy, forces and (periodic structures) stress for every structure of DATA and write them as labels.

    With an ensemble model the labels are the members' mean, and each structure's info also gets the spread:
    energy_std, forces_std, forces_uncertainty (per atom) and stress_std (names follow --energy-key/--forces-key/
    --stress-key, e.g. MACE_energy_std). Structures with elements the model does not know are skipped (one line
    on stderr); the exit code is 0 when at least one structure was predicted.
    """
    from mlip_datasets.io import check_output, open_dataset
    from mlip_datasets.keys import LabelKeys

    from ..checkpoint import load_model
    from ..predict import label_format, predict_file, skipped_summary
    from ..ui import console, err_console, print_json, progress

    keys = LabelKeys(energy=energy_key, forces=forces_key, stress=stress_key)
    check_output(out, label_format(out, to, keys), overwrite)  # fail before the model load
    set_threads(threads)
    with open_dataset(data, fmt) as reader:
        net = load_model(model, device=device, dtype=dtype)
        with progress(f"predict {data.name}", len(reader)) as update:
            report = predict_file(
                net, reader, out, out_format=to, keys=keys, batch_atoms=batch_atoms, overwrite=overwrite,
                progress=update,
            )  # fmt: skip
    if report.skipped:
        err_console.print(skipped_summary(report.skipped, net.config.elements), highlight=False, soft_wrap=True)
    if as_json:
        print_json({"model": str(model), "input": str(data), **report.as_dict()})
        return
    console.print(f"predicted {report.count} structures in {report.seconds:.1f} s; wrote {out}", highlight=False)
