"""Documented experiment: do TransIP's automatic symmetry weights find which symmetry the data has?

Trains the shipped recipe ``transip-symmetry`` (tiny TransIP, 400 EMT molecules, ``loss.symmetry: auto``, no
augmentation) on five data sets that differ only in the labels' symmetry (``mlip data generate`` terms):

* ``symmetric``: EMT only, randomly oriented molecules (rotations and inversion hold);
* ``uniaxial``: + an easy axis along z (rotations broken, inversion kept);
* ``field``: + bond dipoles in a field along z (both broken);
* ``chiral``: + a pseudoscalar (handedness) term (rotations kept, inversion broken);
* ``canonical``: EMT only, every molecule in ASE's template orientation: a control for data that cannot show
  rotational symmetry (a non-equivariant shortcut generalises within one orientation);
* ``chiral-unregularised``: the chiral data with no regulariser at all (``loss.symmetry=0``): how much of the
  chiral term the model can learn in the first place.

For each: the final per-type verdict (``symmetry_holds``), symmetrisation gap, weight and violation, and the
validation force RMSE, as JSON, a Markdown table and a PNG of weights and gaps over training.

    python benchmarks/transip/symmetry_discovery.py --parallel 2 --out benchmarks/results/symmetry_discovery
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "acac")]
from report import load_average, provenance  # noqa: E402  (benchmarks/report.py)
from run_all import run_jobs  # noqa: E402  (the acac driver's job runner)

from mlip_cli.models.symmetry import SYMMETRY_TYPES  # noqa: E402

CASES = {
    "symmetric": ["data.generate.breaking=null"],
    "uniaxial": [],
    "field": ["data.generate.breaking=field"],
    "chiral": ["data.generate.breaking=chiral", "data.generate.strength=10.0"],
    "canonical": ["data.generate.breaking=null", "data.generate.random_orientation=false"],
    "chiral-unregularised": ["data.generate.breaking=chiral", "data.generate.strength=10.0", "loss.symmetry=0"],
}
EXPECTED = {"symmetric": (1, 1), "uniaxial": (0, 1), "field": (0, 0), "chiral": (1, 0), "canonical": (1, 1)}
TYPES = SYMMETRY_TYPES  # ("rotation", "inversion")


def read_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def final(rows: list[dict]) -> dict:
    last = rows[-1]
    out = {"valid_forces_rmse": float(last["valid_forces_rmse"]), "steps": int(last["step"])}
    for t in TYPES:
        if f"symmetry_holds/{t}" in last:
            out[t] = {k: float(last[f"symmetry_{k}/{t}"]) for k in ("holds", "gap", "weight", "violation")}
            # the first validation at which the type was released (None: never)
            out[t]["released_at_step"] = next(
                (int(r["step"]) for r in rows if r[f"symmetry_holds/{t}"] and float(r[f"symmetry_holds/{t}"]) == 0),
                None,
            )
    return out


def plot(histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, len(histories), figsize=(3.2 * len(histories), 5.5), sharex=True, sharey="row", squeeze=False
    )
    for col, (case, rows) in enumerate(histories.items()):
        steps = [int(r["step"]) for r in rows]
        for t, style in zip(TYPES, ("-", "--")):
            axes[0, col].semilogy(steps, [float(r[f"symmetry_weight/{t}"]) for r in rows], style, label=t)
            axes[1, col].plot(steps, [float(r[f"symmetry_gap/{t}"] or "nan") for r in rows], style, label=t)
        axes[0, col].set_title(case)
        axes[1, col].axhline(0.05, color="grey", lw=0.8, ls=":")  # the default release threshold
        axes[1, col].set_ylim(-0.05, 0.15)
        axes[1, col].set_xlabel("step")
    axes[0, 0].set_ylabel("symmetry weight")
    axes[1, 0].set_ylabel("symmetrisation gap\n(share of force variance)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(results: dict) -> str:
    lines = [
        "| data | rotation: holds / gap / weight | inversion: holds / gap / weight | as expected | "
        "valid F RMSE (meV/A) |",
        "|---|---|---|---|---|",
    ]
    for case, r in results.items():
        if r["expected_holds"] is None:  # a control without the regulariser
            lines.append(f"| {case} | - | - | - | {r['valid_forces_rmse']:.0f} |")
            continue
        cells = [f"{'yes' if r[t]['holds'] else 'no'} / {r[t]['gap']:+.3f} / {r[t]['weight']:.3g}" for t in TYPES]
        ok = all(int(r[t]["holds"]) == r["expected_holds"][t] for t in TYPES)
        lines.append(f"| {case} | {cells[0]} | {cells[1]} | {'yes' if ok else 'no'} | {r['valid_forces_rmse']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--work", type=Path, default=Path("bench_out") / "symmetry_discovery")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out") / "symmetry_discovery_report",
        help="stem of the .json, .md and .png outputs",
    )
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = {}
    for case in args.cases:
        shutil.rmtree(args.work / case, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "mlip_cli",
            "train",
            "transip-symmetry",
            "--out",
            str(args.work / case),
            "--quiet",
            "--set",
            f"run.max_steps={args.steps}",
            "--set",
            "run.threads=1",
        ]
        for s in CASES[case]:
            cmd += ["--set", s]
        jobs[case] = cmd
    load_before = load_average()
    codes = run_jobs(jobs, args.parallel, args.work)
    histories = {c: read_rows(args.work / c) for c in args.cases if codes.get(c) == 0}
    plotted = {c: rows for c, rows in histories.items() if c in EXPECTED}
    results = {
        c: {**final(rows), "expected_holds": dict(zip(TYPES, EXPECTED[c])) if c in EXPECTED else None}
        for c, rows in histories.items()
    }
    table = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "steps": args.steps,
        "exit_codes": codes,
        "results": results,
        "provenance": provenance(
            threads=1, dtype="float32", sizes={"structures": 400, "steps": args.steps}, load_before=load_before
        ),
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")
    if plotted:
        plot(plotted, args.out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
