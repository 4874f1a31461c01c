"""``mlip bench``: microbenchmarks (tensor products) with a table on screen, JSON and an optional plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..bench import TP_METHODS  # the package imports no torch

app = typer.Typer(help="Benchmarks: tensor-product convolutions against the e3nn peer.", no_args_is_help=True)

_METHODS = ",".join(TP_METHODS)


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        if r["status"] != "ok":
            out.append([str(r["L"]), r["method"], *["-"] * 8, r["status"]])
            continue
        paths = f"{r['n_paths']} {'all' if r['parity_odd_paths'] else 'even'}"
        rel = f"{r['rel_err_vs_cg']:.0e} {r['rel_err_path_set']}"
        speed = "peer" if r["method"] == "e3nn" else _num(r.get("speedup_vs_e3nn"), ".3g") + "x"
        mem = r["peak_mem_mb"]
        out.append(
            [
                str(r["L"]),
                r["method"],
                _num(r["rank"], "d"),
                paths,
                _ms(r["fwd_ms"]),
                _ms(r["fwd_bwd_ms"]),
                "-" if mem is None else f"{mem:.3g}",
                f"{r['equiv_err']:.0e}",
                rel,
                _num(r.get("cp_fit_rel_error"), ".0e"),
                speed if r.get("speedup_vs_e3nn") else "-",
            ]
        )
    return out


def _warn_if_loaded(threads: int | None, err_console) -> None:
    import os

    import torch

    n = threads or torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if n > 1 and load > 0.5:
        # With another job on a core, every OpenMP barrier waits for a descheduled thread: multi-threaded
        # timings measured 5-100x slower and erratic on the 2-core reference host (benchmarks/bench_message.py).
        err_console.print(
            f"note: load average {load:.1f} on {os.cpu_count()} cores; timings with {n} threads "
            "will be noisy (compare with --threads 1)",
            highlight=False,
        )


def _write_json(path: Path, data: dict) -> None:
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(path)  # the JSON appears only when complete
    finally:
        tmp.unlink(missing_ok=True)


@app.command()
def tp(
    l_min: Annotated[int, typer.Option("--l-min", help="Smallest degree L.")] = 1,
    l_max: Annotated[int, typer.Option("--l-max", help="Largest degree L (features and harmonics 0..L).")] = 6,
    channels: Annotated[int, typer.Option(help="Channels C per degree.")] = 64,
    edges: Annotated[int, typer.Option(help="Number of edges E.")] = 4096,
    nodes: Annotated[int, typer.Option(help="Number of nodes N.")] = 512,
    dtype: Annotated[str, typer.Option(help="Timed dtype: float32 or float64.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="Rank-space message backend: auto (Triton on CUDA once it matches "
            "the torch kernels, else torch), torch, naive, compile, triton."
        ),
    ] = "auto",
    methods: Annotated[str, typer.Option(help=f"Comma-separated rows to measure, from {_METHODS}.")] = _METHODS,
    repeats: Annotated[int, typer.Option(help="Timed calls per measurement (best is reported).")] = 3,
    quick: Annotated[bool, typer.Option(help="One timed call after one warm-up; at most 2 rotations.")] = False,
    e3nn: Annotated[bool, typer.Option("--e3nn/--no-e3nn", help="Measure the e3nn peer if installed.")] = True,
    out: Annotated[Path | None, typer.Option("--out", help="Write all rows and metadata to this JSON file.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print all rows and metadata as JSON instead of a table.")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of time and speed-up vs L.")] = None,
    check_edges: Annotated[int, typer.Option(help="Edges of the float64 sub-graph for the error checks.")] = 256,
    rotations: Annotated[int, typer.Option(help="Random rotations for the equivariance error.")] = 3,
    cp_extra: Annotated[float, typer.Option(help="The cp-high row's extra rank, as a fraction of the default.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Random seed of inputs, graphs and rotations.")] = 0,
) -> None:
    """Time tensor-product convolutions (e3nn, cg, gaunt, cp, rank-space message) for each L.

    Every row computes the same convolution: for each edge, the product of the sender's features with the
    edge's spherical harmonics, times a per-channel edge weight, summed into the receiver. Columns: forward
    and forward+backward time, peak memory, equivariance error and relative error against CG (float64),
    paths covered, and speed-up over e3nn measured in the same run.
    """
    from ..errors import UsageError

    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the figure is written as PNG; give a path ending in .png")
    from ..bench.tp import TPBenchConfig, run_tp_bench
    from ..ui import console, err_console, print_json, table

    cfg = TPBenchConfig(
        l_min=l_min,
        l_max=l_max,
        channels=channels,
        edges=edges,
        nodes=nodes,
        dtype=dtype,
        device=device,
        threads=threads,
        backend=backend,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        repeats=repeats,
        quick=quick,
        check_edges=check_edges,
        rotations=rotations,
        cp_extra=cp_extra,
        seed=seed,
        e3nn=e3nn,
    )
    try:
        cfg.validate()
    except ValueError as err:
        raise UsageError(str(err)) from None
    _warn_if_loaded(threads, err_console)
    with err_console.status("starting") as status:
        result = run_tp_bench(cfg, progress=lambda msg: status.update(f"measuring {msg}"))
    meta = result["meta"]
    columns = [
        "L",
        "method",
        "rank",
        "paths",
        "fwd ms",
        "f+b ms",
        "peak MB",
        "equiv",
        "rel err vs cg",
        "CP fit err",
        "x e3nn",
    ]
    if out is not None:
        _write_json(out, result)
    if plot is not None:
        from ..bench.plot import plot_tp

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_tp(result, plot)
    if as_json:
        print_json(result)
        return
    console.print(table(meta["caption"], columns, _table_rows(result["rows"])))
    console.print(
        "paths: 'all' = both parities (with the 1x1->1 cross product), 'even' = l1+l2+l3 even only. "
        "f+b = forward+backward. equiv, rel err: float64 on a sub-graph; rel err against CG on all "
        "paths (all), even paths (even) or even paths with Gaunt path weights (gaunt). CP fit err: relative "
        "error of the CP factors against the CG tensor. x e3nn = e3nn f+b time / row f+b time, same run.",
        highlight=False,
    )
    for r in result["rows"]:
        if r["status"] != "ok":
            console.print(f"L={r['L']} {r['method']}: {r['status']}: {r.get('note', '')}", highlight=False)
    for written in (out, plot):
        if written is not None:
            console.print(f"wrote {written}")
