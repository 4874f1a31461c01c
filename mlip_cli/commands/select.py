"""``mlip select POOL --model ENSEMBLE --n N --out FILE``: the structures to label next (active learning)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import BatchAtoms, Device, Dtype, JsonSummary, ModelPath, Overwrite, Threads, require_choice, set_threads


def select(
    pool: Annotated[
        Path, typer.Argument(help="Unlabelled structures: any ase.io file or a data set `mlip data` reads.")
    ],
    model: ModelPath,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="How many structures to pick.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output extxyz file (.extxyz or .xyz).")],
    by: Annotated[
        str,
        typer.Option(
            help="Uncertainty per structure: mean or max over atoms of the force uncertainty (eV/A), or energy "
            "(energy std per atom, eV/atom)."
        ),
    ] = "mean",
    min_distance: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Skip a structure whose fingerprint is closer than this to one already picked (default: 0.1 x "
            "the median fingerprint distance in the pool; 0: rank by uncertainty alone).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Orders structures of equal uncertainty.")] = 0,
    fmt: Annotated[str | None, typer.Option("--from", help="Pool format (default: detected).")] = None,
    batch_atoms: BatchAtoms = 4096,
    device: Device = "cpu",
    dtype: Dtype = None,
    threads: Threads = None,
    overwrite: Overwrite = False,
    as_json: JsonSummary = False,
) -> None:
    """Pick the N structures of POOL an ensemble is least sure about, skipping near-duplicates of those picked.

    Structures are taken from the most uncertain down; one whose fingerprint (composition and element-pair
    distance histograms) is within --min-distance of a picked one is skipped. The picks are written with their
    labels and info as in POOL, plus info uncertainty, uncertainty_by, energy_std, pool_index, pool_file,
    select_rank and the per-atom column forces_uncertainty.
    """
    from mlip_datasets.io import open_dataset

    from ..checkpoint import load_model
    from ..predict import skipped_summary
    from ..select import BY, require_ensemble, select_file
    from ..ui import console, err_console, print_json, progress
    from .options import require_new_output

    require_choice("--by", by, BY)
    require_new_output(out, overwrite)  # fail before the model load
    set_threads(threads)
    with open_dataset(pool, fmt) as reader:
        net = load_model(model, device=device, dtype=dtype)
        require_ensemble(net)  # before the progress bar: the error alone on stderr
        with progress(f"select {pool.name}", len(reader)) as update:
            report = select_file(
                net, reader, out, n, by=by, min_distance=min_distance, seed=seed, batch_atoms=batch_atoms,
                overwrite=overwrite, progress=update,
            )  # fmt: skip
    if report.skipped:
        err_console.print(skipped_summary(report.skipped, net.config.elements), highlight=False, soft_wrap=True)
    if len(report.picked) < n:
        why = (
            "the pool has no more structures the model can run"
            if len(report.picked) == report.scored
            else f"the others are within --min-distance {report.min_distance:.4g} of a pick"
        )
        err_console.print(f"note: picked {len(report.picked)} of the {n} asked: {why}", highlight=False, soft_wrap=True)
    if as_json:
        print_json({"model": str(model), "pool": str(pool), **report.as_dict()})
        return
    console.print(
        f"picked {len(report.picked)} of {report.scored} structures by {report.by} uncertainty "
        f"(min distance {report.min_distance:.4g}) in {report.seconds:.1f} s; wrote {out}",
        highlight=False,
    )
