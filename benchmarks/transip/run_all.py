"""TransIP benchmark driver: learned equivariance against ``tdn`` under the same time budget.

For one data set (``acac`` or ``3bpa``) it trains, ``--parallel`` jobs at a time with ``--threads`` threads each:

* ``tdn``: the exact CP model (recipe ``<dataset>/tdn``);
* ``aug``: TransIP with rotation augmentation only (``loss.symmetry=0``, ``run.augment_rotations=true``);
* ``align``: TransIP with the alignment loss and automatically tuned weights, no augmentation
  (``loss.symmetry=auto``, ``run.augment_rotations=false``);

then scores every best checkpoint with ``mlip eval --json`` on the test set, and each TransIP model a second time
with ``--frame-averaging`` (variant (c)). ``acac`` tests on ``test_MD_300K.xyz``; ``3bpa`` ships only
``train_300K.xyz``, so it is split 400 / 50 / 50 (seed 0) with ``mlip data split`` first.

    python benchmarks/transip/run_all.py --dataset 3bpa --data ../shared/data/3bpa --budget 1200 \
        --threads 1 --parallel 2 --out benchmarks/results/3bpa_transip_20min_threads1.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "acac")]
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)
from run_all import run_jobs  # noqa: E402  (the acac driver's job runner)

ROOT = Path(__file__).resolve().parents[2]
#: loss.symmetry of the learned arm: the paper's mechanism beside augmentation, with a fixed weight
LEARNED_WEIGHT = 0.01
VARIANTS = {
    "tdn": ("tdn", []),
    "aug": ("transip", ["loss.symmetry=0", "run.augment_rotations=true"]),
    "align": ("transip", ["loss.symmetry=auto", "run.augment_rotations=false"]),
    "learned": (
        "transip",
        ["model.equivariance=learned", f"loss.symmetry={LEARNED_WEIGHT}", "run.augment_rotations=true"],
    ),
}
LABELS = {
    "tdn": "tdn",
    "aug": "(a) augmentation only",
    "align": "(b) alignment loss, tuned weights",
    "learned": "(d) learned transformation network + augmentation",
}


def mlip(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlip_cli", *args]


def data_files(args) -> dict[str, Path]:
    """Train/valid/test paths (valid None: the recipe's split of the training file)."""
    if args.dataset == "acac":
        return {"train": args.data / "train_300K.xyz", "valid": None, "test": args.data / "test_MD_300K.xyz"}
    split = args.work / "split"
    if not (split / "train_300K.test.xyz").exists():
        subprocess.run(
            mlip(
                "data",
                "split",
                str(args.data / "train_300K.xyz"),
                "--fractions",
                "0.8,0.1,0.1",
                "--seed",
                "0",
                "--out",
                str(split),
                "--overwrite",
            ),
            check=True,
            cwd=ROOT,
        )
    return {name: split / f"train_300K.{name}.xyz" for name in ("train", "valid", "test")}


def sizes(files: dict) -> dict:
    """Frames in each split (the acac recipe splits its training file 450 / 50 itself)."""
    from mlip_datasets.io import open_dataset

    counts = {}
    for name, path in files.items():
        if path is not None:
            with open_dataset(path) as reader:
                counts[name] = len(reader)
    return counts


def train_command(variant: str, files: dict, args, run: Path) -> list[str]:
    family, sets = VARIANTS[variant]
    return recipe_command(f"{args.dataset}/{family}", files, args, run, sets)


def recipe_command(recipe: str, files: dict, args, run: Path, sets=()) -> list[str]:
    """``mlip train RECIPE`` on the split files for ``args.budget`` seconds with ``args.threads`` threads, plus
    ``--set`` overrides."""
    cmd = mlip(
        "train",
        recipe,
        "--data",
        str(files["train"]),
        "--test-data",
        str(files["test"]),
        "--time-budget",
        str(args.budget),
        "--out",
        str(run),
        "--quiet",
        "--set",
        f"run.threads={args.threads}",
    )
    if files["valid"] is not None:
        cmd += ["--valid-data", str(files["valid"])]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def evaluate(run: Path, test: Path, threads: int, frame_averaging: bool | None) -> dict:
    cmd = mlip("eval", str(run / "best.pt"), str(test), "--json", "--parity", str(run / "parity.png"))
    if frame_averaging is not None:
        cmd.append("--frame-averaging" if frame_averaging else "--no-frame-averaging")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    return json.loads(out)


def summary(run: Path, report: dict) -> dict:
    """Training numbers (result.yaml), the last logged symmetry weights/violations (metrics.csv) and the eval."""
    import csv

    import yaml

    result = yaml.safe_load((run / "result.yaml").read_text())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    symmetry = {k: float(v) for k, v in (rows[-1] if rows else {}).items() if k.startswith("symmetry_") and v}
    t = result["timing"]
    return {
        "steps": result["steps"],
        "structures_per_s": t["structures_per_s"],
        "median_step_ms": t["median_step_ms"],
        "train_s": t["train_s"],
        "symmetry_last": symmetry,
        "eval": report,
    }


def table(results: dict) -> str:
    lines = [
        "| model | test F RMSE (meV/A) | test E RMSE (meV/atom) | rotation: E err (meV/atom) / F rel. | "
        "inversion: E err (meV/atom) / F rel. | steps | structures/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        e = r["eval"]
        m, q = e["metrics"], e["equivariance"]
        rot, ref = q["rotation"], q["inversion"]
        lines.append(
            f"| {name} | {m['forces_rmse']:.1f} | {m['energy_per_atom_rmse']:.3f} | "
            f"{rot['energy_mev_per_atom']:.2g} / {rot['force_rel']:.1e} | "
            f"{ref['energy_mev_per_atom']:.2g} / {ref['force_rel']:.1e} | {r['steps']:,} | "
            f"{r['structures_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("acac", "3bpa"), required=True)
    p.add_argument("--data", type=Path, help="data directory (default: ../shared/data/<dataset>)")
    p.add_argument("--budget", type=float, default=1200, help="training seconds per model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=1, help="jobs at a time (each with --threads threads)")
    p.add_argument("--variants", nargs="+", default=["tdn", "aug", "align"], choices=list(VARIANTS))
    p.add_argument("--work", type=Path, help="run directory (default: bench_out/transip-<dataset>)")
    p.add_argument("--out", type=Path, help="JSON report (default: <work>/report.json)")
    p.add_argument("--eval-only", action="store_true", help="score existing runs in --work without training")
    args = p.parse_args()
    args.data = args.data or ROOT.parent / "shared" / "data" / args.dataset
    args.work = args.work or ROOT / "bench_out" / f"transip-{args.dataset}"
    args.out = args.out or args.work / "report.json"
    args.work.mkdir(parents=True, exist_ok=True)
    files = data_files(args)
    runs = {v: args.work / v for v in args.variants}
    load_before = load_average()
    codes = {v: 0 for v in runs}
    if not args.eval_only:
        for run in runs.values():
            shutil.rmtree(run, ignore_errors=True)
        codes = run_jobs({v: train_command(v, files, args, run) for v, run in runs.items()}, args.parallel, args.work)
    results = {}
    for v, run in runs.items():
        if codes.get(v) != 0:
            continue
        if VARIANTS[v][0] == "transip":
            results[LABELS[v]] = summary(run, evaluate(run, files["test"], args.threads, False))
            results[f"(c) = {LABELS[v][:3]} + frame averaging"] = summary(
                run, evaluate(run, files["test"], args.threads, True)
            )
        else:
            results[LABELS[v]] = summary(run, evaluate(run, files["test"], args.threads, None))
    report = {
        "dataset": args.dataset,
        "budget_s": args.budget,
        "threads": args.threads,
        "parallel": args.parallel,
        "exit_codes": codes,
        "results": results,
        "provenance": provenance(threads=args.threads, dtype="float32", sizes=sizes(files), load_before=load_before),
    }
    write_report(args.out, report, table(results))


if __name__ == "__main__":
    main()
