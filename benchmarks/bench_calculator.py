"""Calculator calls/s and MD steps/s: mlip's ``tdn``, ``gaunt``, ``cg`` against MACE's ASE calculator.

    .venv/bin/python benchmarks/bench_calculator.py --out benchmarks/results/bench_calculator.json

Both sides in the same run on the same machine, one torch thread each, untrained weights (timing only), the
same structures and timing loops (:mod:`mace_calculator`: 64- and 1,000-atom periodic fcc Cu, a 15-atom
benzene-water molecule; float32 and float64). Rounds alternate: all mlip rows, then the MACE rows (a
subprocess in MACE's own virtual environment), ``--repeats`` times; each rate is the median over rounds and
each "vs MACE" ratio the median of the ratios within a round (both sides of a round saw about the same load
on a shared machine). ``--from-json FILE`` re-summarises saved rounds.

Sizes: mlip models with 32 channels, L = 1, 2 interactions, cutoff 5 A (8 Bessel functions, radial MLP 64x2);
MACE with hidden irreps 32x0e + 32x1o, max_ell 1, 2 interactions, r_max 5 A, correlation 3.

What each side computes: calls/s ask for forces and, for periodic systems, the stress, and both compute them
in one model call (mlip's calculator with ``always_stress=True``; MACE always computes the stress). In MD both
calculators are used as a user would: mlip computes energy and forces only (velocity Verlet needs no stress),
MACE's calculator also computes the stress of periodic systems, as it always does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mace_calculator import (  # noqa: E402
    CALCULATOR_SYSTEMS,
    CHANNELS,
    CUTOFF,
    ELEMENTS,
    LMAX,
    NUM_INTERACTIONS,
    SYSTEMS,
    time_calls,
    time_md,
)
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

FAMILIES = ("tdn", "gaunt", "cg")
MACE_PYTHON = "/work/venvs/mace/bin/python"


def mlip_model(family: str, dtype: str):
    import torch

    from mlip_cli.models import build_model

    torch.manual_seed(0)
    cfg = {
        "family": family,
        "elements": ELEMENTS,
        "cutoff": CUTOFF,
        "channels": CHANNELS,
        "lmax": LMAX,
        "num_interactions": NUM_INTERACTIONS,
        "num_radial": 8,
        "avg_num_neighbors": 20.0,
    }
    return build_model(cfg, dtype=torch.float64 if dtype == "float64" else torch.float32).eval()


def run_mlip(families, dtypes, systems, min_time: float) -> list[dict]:
    import torch

    from mlip_cli.calculator import MLIPCalculator

    torch.set_num_threads(1)
    rows = []
    for family in families:
        for dtype in dtypes:
            model = mlip_model(family, dtype)
            for name in systems:
                atoms = SYSTEMS[name]()
                atoms.calc = MLIPCalculator(model, always_stress=True)
                calls = time_calls(atoms, min_time)
                atoms = SYSTEMS[name]()
                atoms.calc = calc = MLIPCalculator(model)
                steps = time_md(atoms, min_time)
                rows.append(
                    {
                        "side": "mlip",
                        "family": family,
                        "system": name,
                        "natoms": len(atoms),
                        "dtype": dtype,
                        "calls_per_s": calls,
                        "md_steps_per_s": steps,
                        "md_neighbor_builds_per_call": calc.neighbors.builds / max(calc.model_calls, 1),
                    }
                )
                print(
                    f"mlip {family} {name} {dtype}: {calls:.2f} calls/s, {steps:.2f} steps/s",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def run_mace(dtypes, systems, min_time: float, python: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mace.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [
            python,
            str(HERE / "mace_calculator.py"),
            "--systems",
            ",".join(systems),
            "--dtypes",
            ",".join(dtypes),
            "--min-time",
            str(min_time),
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"MACE side failed:\n{proc.stderr[-3000:]}")
        data = json.loads(out.read_text())
    for line in proc.stderr.splitlines():
        if line.startswith("mace "):
            print(line, file=sys.stderr, flush=True)
    return data["rows"], data["meta"]


def summarize(rounds: list[list[dict]]) -> list[dict]:
    """Median over rounds per (side, family, system, dtype), with the ratio to MACE's row of the same size."""
    keyed: dict[tuple, list[dict]] = {}
    for rows in rounds:
        for r in rows:
            keyed.setdefault((r["side"], r["family"], r["system"], r["dtype"]), []).append(r)
    out = []
    for (side, family, system, dtype), rs in keyed.items():
        out.append(
            {
                "side": side,
                "family": family,
                "system": system,
                "natoms": rs[0]["natoms"],
                "dtype": dtype,
                "calls_per_s": statistics.median(r["calls_per_s"] for r in rs),
                "md_steps_per_s": statistics.median(r["md_steps_per_s"] for r in rs),
                "calls_per_s_all": [r["calls_per_s"] for r in rs],
                "md_steps_per_s_all": [r["md_steps_per_s"] for r in rs],
            }
        )
    # ratios within each round (MACE runs right after mlip, so both saw about the same machine load), then
    # the median over rounds
    for r in out:
        if r["side"] != "mlip":
            continue
        calls, md = [], []
        for rows in rounds:
            ref = {(x["system"], x["dtype"]): x for x in rows if x["side"] == "mace"}.get((r["system"], r["dtype"]))
            mine = [
                x
                for x in rows
                if x["side"] == "mlip"
                and x["family"] == r["family"]
                and x["system"] == r["system"]
                and x["dtype"] == r["dtype"]
            ]
            if ref and mine:
                calls.append(mine[0]["calls_per_s"] / ref["calls_per_s"])
                md.append(mine[0]["md_steps_per_s"] / ref["md_steps_per_s"])
        if calls:
            r["calls_vs_mace"], r["md_vs_mace"] = statistics.median(calls), statistics.median(md)
            r["calls_vs_mace_all"], r["md_vs_mace_all"] = calls, md
    order = {name: k for k, name in enumerate(SYSTEMS)}
    out.sort(key=lambda r: (order[r["system"]], r["dtype"], r["side"] != "mace", r["family"]))
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| system | atoms | dtype | model | calls/s | MD steps/s | calls vs MACE | MD vs MACE |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = (f"{r['calls_vs_mace']:.2f}x", f"{r['md_vs_mace']:.2f}x") if "md_vs_mace" in r else ("1", "1")
        lines.append(
            f"| {r['system']} | {r['natoms']} | {r['dtype']} | {r['family']} | {r['calls_per_s']:.2f} | "
            f"{r['md_steps_per_s']:.2f} | {ratio[0]} | {ratio[1]} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--systems", default=",".join(CALCULATOR_SYSTEMS))
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (mlip then MACE); medians are reported")
    ap.add_argument("--mace-python", default=MACE_PYTHON, help="python of the MACE venv ('' to skip MACE)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_calculator.json")
    ap.add_argument("--from-json", type=Path, help="only re-summarise the rounds saved in this result file")
    args = ap.parse_args()
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        data["rows"] = summarize(data["rounds"])
        args.from_json.write_text(json.dumps(data, indent=2))
        args.from_json.with_suffix(".md").write_text(markdown(data["rows"]) + "\n")
        print(markdown(data["rows"]))
        return
    families, systems, dtypes = (args.families.split(","), args.systems.split(","), args.dtypes.split(","))
    rounds, mace_meta = [], None
    start, load_start = time.time(), load_average()
    for k in range(args.repeats):
        print(f"round {k + 1}/{args.repeats}", file=sys.stderr, flush=True)
        rows = run_mlip(families, dtypes, systems, args.min_time)
        if args.mace_python:
            mace_rows, mace_meta = run_mace(dtypes, systems, args.min_time, args.mace_python)
            rows += mace_rows
        rounds.append(rows)
    summary = summarize(rounds)
    meta = {
        "provenance": provenance(
            threads=1,
            dtype=args.dtypes,
            load_before=load_start,
            sizes={
                "channels": CHANNELS,
                "lmax": LMAX,
                "num_interactions": NUM_INTERACTIONS,
                "cutoff": CUTOFF,
                "systems": {k: len(SYSTEMS[k]()) for k in systems},
            },
        ),
        "repeats": args.repeats,
        "min_time_s": args.min_time,
        "wall_s": time.time() - start,
        "mace": mace_meta,
    }
    md = markdown(summary)
    write_report(args.out, {"meta": meta, "rows": summary, "rounds": rounds}, md)
    args.out.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
