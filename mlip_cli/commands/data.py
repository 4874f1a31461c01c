"""``mlip data``: inspect, convert, summarise, split, validate and generate data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import ChargeKey, EnergyKey, ForcesKey, SpinKey, StressKey, label_keys

app = typer.Typer(help="Inspect, convert, summarise, split, validate and generate data sets.", no_args_is_help=True)

FromOpt = Annotated[str | None, typer.Option("--from", help="Input format (default: detected).")]
ToOpt = Annotated[str | None, typer.Option("--to", help="Output format (default: from the extension).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
UnitsOpt = Annotated[
    str | None,
    typer.Option(
        "--units",
        help="Units of HDF5 values the file does not declare, e.g. energy=hartree,length=bohr "
        "(kinds: length, energy, forces; forces default to energy/length).",
    ),
]


def _open(path: Path, fmt: str | None, energy=None, forces=None, stress=None, charge=None, spin=None, *, units=None):
    from mlip_datasets.io import open_dataset
    from mlip_datasets.units import parse_units

    from ..errors import UsageError

    try:
        units = parse_units(units) if units is not None else None
    except ValueError as err:
        raise UsageError(f"--units: {err}") from None
    keys = label_keys(energy=energy, forces=forces, stress=stress, charge=charge, spin=spin)
    return open_dataset(path, fmt, keys, units=units)


def _stats(reader, description: str, cutoff: float | None = None):
    """The data set's statistics: those a native store keeps from when it was written (no pass over a million
    records), else one pass over every record."""
    from mlip_datasets.stats import DatasetStats, compute_stats

    from ..ui import progress

    stored = reader.stats() if cutoff is None and hasattr(reader, "stats") else None
    if stored:
        return DatasetStats.from_dict(stored)
    with progress(description, len(reader)) as update:
        return compute_stats(reader, cutoff=cutoff, progress=update)


def _symbol(z) -> str:
    """The element symbol of atomic number ``z``; ``Z=<z>`` for a number that is no element (never an IndexError)."""
    from ase.data import chemical_symbols

    z = int(z)
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"


def _symbols(numbers) -> str:
    return " ".join(_symbol(z) for z in numbers)


@app.command()
def info(
    path: Path,
    fmt: FromOpt = None,
    units: UnitsOpt = None,
    as_json: JsonOpt = False,
    energy_key: EnergyKey = None,
    forces_key: ForcesKey = None,
    stress_key: StressKey = None,
    charge_key: ChargeKey = None,
    spin_key: SpinKey = None,
) -> None:
    """Detect the format and print size, elements, labels, periodicity and energy kind."""
    from mlip_datasets.label_kind import label_kind

    from ..ui import console, print_json, table

    with _open(path, fmt, energy_key, forces_key, stress_key, charge_key, spin_key, units=units) as reader:
        stats = _stats(reader, "reading")
        metadata = reader.metadata()
        summary = {
            "path": str(path),
            "format": reader.format_name,
            "structures": stats.n_structures,
            "atoms_min": stats.natoms_min,
            "atoms_mean": stats.n_atoms / max(stats.n_structures, 1),
            "atoms_max": stats.natoms_max,
            "elements": _symbols(stats.element_counts),
            "labels": stats.label_counts,
            "periodicity": stats.periodicity,
            "energy_kind": label_kind(reader)[0] or "unknown",
            **{k: v for k, v in metadata.items() if k != "energy_kind"},
        }
    if as_json:
        print_json(summary)
        return
    rows = [[key.replace("_", " "), _fmt(value)] for key, value in summary.items()]
    console.print(table(f"{path}", ["property", "value"], rows))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value)


@app.command()
def convert(
    src: Path,
    dst: Path,
    to: ToOpt = None,
    fmt: FromOpt = None,
    units: UnitsOpt = None,
    shards: Annotated[int, typer.Option(min=1, help="Number of output shards.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it exists.")] = False,
    energy_key: EnergyKey = None,
    forces_key: ForcesKey = None,
    stress_key: StressKey = None,
    charge_key: ChargeKey = None,
    spin_key: SpinKey = None,
) -> None:
    """Convert SRC to DST (format from DST's extension or --to); DST appears only when complete."""
    from mlip_datasets.io import output_format, write_dataset

    from ..ui import console, progress

    with (
        _open(src, fmt, energy_key, forces_key, stress_key, charge_key, spin_key, units=units) as reader,
        progress(f"{src.name} -> {dst.name}", len(reader)) as update,
    ):
        count = write_dataset(dst, reader, to, shards=shards, overwrite=overwrite, progress=update)
    console.print(f"wrote {count} structures to {dst}")
    if dst.suffix.lower() == ".lmdb" and output_format(dst, to).name == "native":
        from mlip_datasets.formats.native import FOREIGN_READERS_NOTE

        console.print(f"note: {dst.name} is an {FOREIGN_READERS_NOTE}", highlight=False)


@app.command()
def stats(
    path: Path,
    cutoff: Annotated[float | None, typer.Option(help="Also count neighbours within R.")] = None,
    fmt: FromOpt = None,
    units: UnitsOpt = None,
    as_json: JsonOpt = False,
    energy_key: EnergyKey = None,
    forces_key: ForcesKey = None,
) -> None:
    """E0s by least squares, energy and force statistics, average neighbours within --cutoff."""
    from mlip_datasets.label_kind import label_kind

    from ..ui import console, print_json, table

    with _open(path, fmt, energy_key, forces_key, units=units) as reader:
        result = _stats(reader, "statistics", cutoff)
        energy_kind, _ = label_kind(reader)
    if as_json:
        print_json({**result.as_dict(), "energy_kind": energy_kind})
        return
    if energy_kind == "adsorption":
        console.print(
            "note: these are adsorption energies (OC20: slab and gas references already subtracted); the E0s "
            "below are fitted to them and are not atomic reference energies",
            highlight=False,
        )
    rows = [
        [_symbol(z), result.element_counts[z], f"{result.e0s[z]:.6f}" if z in result.e0s else "-"]
        for z in result.element_counts
    ]
    console.print(table("elements", ["element", "atoms", "E0 (eV)"], rows))
    scalars = {k: v for k, v in result.as_dict().items() if not isinstance(v, dict) and v is not None}
    console.print(
        table(
            "statistics",
            ["quantity", "value"],
            [[k.replace("_", " "), f"{v:.6g}" if isinstance(v, float) else v] for k, v in scalars.items()],
        )
    )


@app.command()
def split(
    path: Path,
    fractions: Annotated[str, typer.Option(help="Comma-separated fractions summing to 1.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    group_by: Annotated[str | None, typer.Option(help="Keep records sharing this key together (sid).")] = None,
    names: Annotated[str, typer.Option(help="Names of the splits.")] = "train,valid,test",
    out: Annotated[Path | None, typer.Option(help="Output directory (default: beside PATH).")] = None,
    to: ToOpt = None,
    fmt: FromOpt = None,
    units: UnitsOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    energy_key: EnergyKey = None,
    forces_key: ForcesKey = None,
    stress_key: StressKey = None,
    charge_key: ChargeKey = None,
    spin_key: SpinKey = None,
) -> None:
    """Reproducible splits written as data sets, plus split.json with the indices; all appear or none."""
    from mlip_datasets.split import parse_fractions, split_indices, write_splits

    from ..errors import UsageError
    from ..ui import console, progress, table

    try:
        parts = parse_fractions(fractions)
    except ValueError as err:
        raise UsageError(f"--fractions: {err}") from None
    labels = [n.strip() for n in names.split(",")]
    if len(labels) != len(parts):
        raise UsageError(f"--names has {len(labels)} names for {len(parts)} fractions")
    out = out or path.parent
    index_file = out / f"{path.stem}.split.json"
    reader = _open(path, fmt, energy_key, forces_key, stress_key, charge_key, spin_key, units=units)
    with reader:
        groups = None
        if group_by:
            groups = [_group_key(reader, i, group_by) for i in range(len(reader))]
        indices = split_indices(len(reader), parts, seed, groups)
        ext = "" if path.is_dir() or not path.suffix else path.suffix
        targets = [out / f"{path.stem}.{label}{ext}" for label in labels]
        index = {
            "source": str(path),
            "seed": seed,
            "fractions": parts,
            "group_by": group_by,
            **{l: i.tolist() for l, i in zip(labels, indices)},
        }
        write_splits(reader, targets, indices, index_file, index, to, overwrite=overwrite, progress=progress)
    rows = [[label, len(idx), str(target)] for label, idx, target in zip(labels, indices, targets)]
    console.print(table("split", ["split", "structures", "path"], rows))
    console.print(f"indices in {index_file}")


def _group_key(reader, i: int, key: str):
    s = reader[i]
    value = getattr(s, key, None) if key in ("sid", "fid") else s.info.get(key)
    if value is None:
        from ..errors import UsageError

        raise UsageError(f"{reader.record_name(i)}: no {key!r} to group by")
    return value


@app.command()
def validate(
    path: Path,
    fmt: FromOpt = None,
    units: UnitsOpt = None,
    min_distance: Annotated[float, typer.Option(help="Closest allowed distance between atoms (A).")] = 0.1,
    show: Annotated[int, typer.Option(help="How many problems to list.")] = 20,
    as_json: JsonOpt = False,
    energy_key: EnergyKey = None,
    forces_key: ForcesKey = None,
    stress_key: StressKey = None,
) -> None:
    """Check every record; exit code 1 if any is bad."""
    from mlip_datasets.validate import validate as run_validation

    from ..ui import console, print_json, progress

    with _open(path, fmt, energy_key, forces_key, stress_key, units=units) as reader:
        with progress("validating", len(reader)) as update:
            problems, n_bad = run_validation(reader, min_distance, progress=update)
        total = len(reader)
    if as_json:
        print_json({"records": total, "bad_records": n_bad, "problems": [str(p) for p in problems[:show]]})
    else:
        for p in problems[:show]:
            console.print(f"[red]bad[/red] {p}", highlight=False)
        if len(problems) > show:
            console.print(f"... and {len(problems) - show} more problems")
        style = "red" if n_bad else "green"
        console.print(f"[{style}]{n_bad} of {total} records bad[/{style}]")
    if n_bad:
        raise typer.Exit(1)


@app.command()
def generate(
    out: Path,
    kind: Annotated[str, typer.Option(help="slab-adsorbate or molecule.")] = "slab-adsorbate",
    n: Annotated[int, typer.Option(min=1, help="Number of structures.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    size: Annotated[str | None, typer.Option(help="slab-adsorbate: slab repeats NX,NY,LAYERS (default 3,3,4).")] = None,
    max_force: Annotated[
        float | None, typer.Option(help="slab-adsorbate: drop frames with a force component above this (eV/A).")
    ] = None,
    breaking: Annotated[
        str | None,
        typer.Option(
            help="Add a symmetry-breaking energy term: uniaxial (easy axis along z: breaks rotations, keeps "
            "the inversion), field (bond dipoles in a field along z: breaks both) or chiral "
            "(handedness: keeps rotations, breaks the inversion)."
        ),
    ] = None,
    strength: Annotated[
        float, typer.Option(help="Strength of --breaking: eV (uniaxial), eV/A (field), eV/A^3 (chiral).")
    ] = 1.0,
    random_orientation: Annotated[
        bool | None, typer.Option(help="molecule: rotate each molecule at random (default: on with --breaking).")
    ] = None,
    to: ToOpt = None,
    shards: Annotated[int, typer.Option(min=1, help="Number of output shards.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Make OC20-like slab+adsorbate frames or rattled molecules with ASE's EMT calculator."""
    from mlip_datasets.generate import KINDS
    from mlip_datasets.generate import generate as make
    from mlip_datasets.io import write_dataset
    from mlip_datasets.symmetry_breaking import TERMS

    from ..errors import UsageError
    from ..ui import console, progress

    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: choose from {', '.join(KINDS)}")
    if breaking is not None and breaking not in TERMS:
        raise UsageError(f"--breaking {breaking!r}: choose from {', '.join(TERMS)}")
    options = {} if breaking is None else {"breaking": breaking, "strength": strength}
    if kind == "slab-adsorbate":
        if size is not None:
            try:
                options["size"] = tuple(int(x) for x in size.split(","))
            except ValueError:
                options["size"] = ()
            if len(options["size"]) != 3 or min(options["size"]) < 1:
                raise UsageError(f"--size {size!r}: expected three positive integers NX,NY,LAYERS, e.g. 2,2,3")
        if max_force is not None:
            options["max_force"] = max_force
        if random_orientation:
            raise UsageError("--random-orientation applies to --kind molecule only")
    elif size is not None or max_force is not None:
        raise UsageError("--size and --max-force apply to --kind slab-adsorbate only")
    elif random_orientation is not None:
        options["random_orientation"] = random_orientation
    with progress(f"generating {kind}", n) as update:
        count = write_dataset(
            out, make(kind, n, seed, **options), to, shards=shards, overwrite=overwrite, progress=update
        )
    console.print(f"wrote {count} structures to {out}")
