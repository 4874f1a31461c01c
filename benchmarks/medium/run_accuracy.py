"""Medium models against MACE under one time budget (issue 17): test and hot-test errors of every family.

For one data set it trains, ``--parallel`` jobs at a time with ``--threads`` torch threads each and the same
``--budget`` seconds of training (validation excluded on both sides):

* each mlip family with its medium recipe ``<dataset>/<family>-medium`` (128 channels, L = 2, 3 interactions) and
  the isolated-atom E0s of the data set;
* MACE (``benchmarks/acac/mace_train.py`` in MACE's own venv) with hidden irreps 128x0e + 128x1o + 128x2e,
  edge harmonics to max_ell 3, correlation 3, ``--mace-interactions`` interactions (default 2, as MACE's CLI and
  MACE-OFF's medium model), the same split, E0s, loss, optimiser, schedule, EMA and budget.

Data (issue 17): ``acac`` trains on ``train_300K.xyz`` (450 / 50 split, seed 0), tests on ``test_MD_300K.xyz`` and
on the hot ``train_600K.xyz`` (out of distribution for a 300 K model); ``3bpa`` splits ``train_300K.xyz``
400 / 50 / 50 (seed 0; its standard test files are not available here). Every best checkpoint is scored with
``mlip eval --json``; MACE scores its own best EMA model and saves it (``mace.model``) for the stability benchmark.

    python benchmarks/medium/run_accuracy.py --dataset acac --budget 1800 --threads 1 --parallel 2 \\
        --out benchmarks/results/medium_acac_30min.json
    python benchmarks/medium/run_accuracy.py --dataset acac --budget 5400 --arms tdn \\
        --set model.num_interactions=4 --tag 4int --out benchmarks/results/medium_acac_90min_tdn_4int.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

# The TransIP driver's helpers (data split, `mlip eval`, result.yaml summary), imported under another name: it
# imports the acac driver as ``run_all`` itself.
_spec = importlib.util.spec_from_file_location("transip_run_all", HERE.parent / "transip" / "run_all.py")
transip_run_all = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(transip_run_all)
ROOT, data_files, evaluate, run_jobs = (
    transip_run_all.ROOT,
    transip_run_all.data_files,
    transip_run_all.evaluate,
    transip_run_all.run_jobs,
)
sizes, summary, recipe_command = transip_run_all.sizes, transip_run_all.summary, transip_run_all.recipe_command

FAMILIES = ("tdn", "gaunt", "cg", "transip")
E0S = {"acac": "isolated_atoms.xyz", "3bpa": "iso_atoms.xyz"}
HOT = {"acac": "train_600K.xyz"}  # hot test sets of models trained at 300 K


def mlip_command(family: str, files: dict, args, run: Path) -> list[str]:
    e0s = f"data.e0s={args.data / E0S[args.dataset]}"
    return recipe_command(f"{args.dataset}/{family}-medium", files, args, run, [e0s, *args.set])


def mace_command(args, run: Path) -> list[str]:
    cmd = [
        args.mace_python,
        str(ROOT / "benchmarks" / "acac" / "mace_train.py"),
        "--train-file",
        str(args.data / "train_300K.xyz"),
        "--e0s-file",
        str(args.data / E0S[args.dataset]),
        "--threads",
        str(args.threads),
        "--time-budget",
        str(args.budget),
        "--num-channels",
        "128",
        "--max-L",
        "2",
        "--num-interactions",
        str(args.mace_interactions),
        "--correlation",
        "3",
        "--save-model",
        str(run / "mace.model"),
        "--out",
        str(run / "mace.json"),
    ]
    if args.dataset == "acac":
        cmd += ["--test-file", str(args.data / "test_MD_300K.xyz"), "--n-train", "450"]
    else:  # the split `mlip data split --fractions 0.8,0.1,0.1 --seed 0` makes for the mlip side
        cmd += ["--split", "0.8,0.1,0.1"]
    cmd += [f"--extra-test={name}={args.data / file}" for name, file in hot_sets(args).items()]
    return cmd


def hot_sets(args) -> dict[str, str]:
    return {"hot_600K": HOT[args.dataset]} if args.dataset in HOT else {}


def mace_summary(run: Path) -> dict:
    """The MACE side's numbers in the shape of the mlip rows (``eval.metrics`` in meV, meV/atom, meV/A)."""
    d = json.loads((run / "mace.json").read_text())

    def metrics(t: dict) -> dict:
        return {
            "energy_rmse": t["energy_rmse_meV"],
            "energy_per_atom_rmse": t["energy_rmse_meV_per_atom"],
            "forces_rmse": t["forces_rmse_meV_per_A"],
            "forces_mae": t["forces_mae_meV_per_A"],
        }

    tr = d["training"]
    return {
        "steps": tr["steps"],
        "structures_per_s": tr["structures_per_s"],
        "median_step_ms": tr["median_step_ms"],
        "train_s": tr["train_s"],
        "parameters": d["parameters"],
        "eval": {"metrics": metrics(d["test"])},
        "hot": {name: {"metrics": metrics(t)} for name, t in d.get("test_extra", {}).items()},
        "model_file": str(run / "mace.model"),
    }


def table(results: dict) -> str:
    hot = sorted({name for r in results.values() for name in r.get("hot", {})})
    head = "| model | test F RMSE (meV/A) | test E RMSE (meV/atom) | " + "".join(
        f"{h} F RMSE | {h} E RMSE (meV/atom) | " for h in hot
    )
    lines = [head + "steps | median step (ms) |", "|---" * (5 + 2 * len(hot)) + "|"]
    for name, r in results.items():
        m = r["eval"]["metrics"]
        cells = [f"{m['forces_rmse']:.1f}", f"{m['energy_per_atom_rmse']:.3f}"]
        for h in hot:
            hm = r["hot"][h]["metrics"]
            cells += [f"{hm['forces_rmse']:.1f}", f"{hm['energy_per_atom_rmse']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['steps']:,} | {r['median_step_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=tuple(E0S), required=True)
    p.add_argument("--data", type=Path, help="data directory (default: ../shared/data/<dataset>)")
    p.add_argument("--budget", type=float, default=1800, help="training seconds per model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=2, help="jobs at a time (each with --threads threads)")
    p.add_argument("--arms", nargs="+", default=[*FAMILIES, "mace"], choices=[*FAMILIES, "mace"])
    p.add_argument("--mace-python", default="/work/venvs/mace/bin/python")
    p.add_argument("--mace-interactions", type=int, default=2)
    p.add_argument("--work", type=Path, help="run directory (default: bench_out/medium-<dataset>-<budget>s)")
    p.add_argument("--out", type=Path, help="JSON report (default: <work>/report.json)")
    p.add_argument("--eval-only", action="store_true", help="score existing runs in --work without training")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE override for every mlip arm (repeatable)")
    p.add_argument("--tag", help="name the mlip arms and their runs <family>-<tag> (a variant of the recipes)")
    args = p.parse_args()
    args.data = (args.data or ROOT.parent / "shared" / "data" / args.dataset).resolve()
    args.work = args.work or ROOT / "bench_out" / f"medium-{args.dataset}-{int(args.budget)}s"
    args.out = args.out or args.work / "report.json"
    args.work.mkdir(parents=True, exist_ok=True)
    files = data_files(args)
    family = {f"{arm}-{args.tag}" if args.tag and arm != "mace" else arm: arm for arm in args.arms}  # name -> arm
    runs = {name: args.work / name for name in family}
    load_before = load_average()
    codes = {arm: 0 for arm in runs}
    if not args.eval_only:
        jobs = {}
        for arm, run in runs.items():
            shutil.rmtree(run, ignore_errors=True)
            if arm == "mace":
                run.mkdir(parents=True)
                jobs[arm] = mace_command(args, run)
            else:
                jobs[arm] = mlip_command(family[arm], files, args, run)
        codes = run_jobs(jobs, args.parallel, args.work)
    results = {}
    for arm, run in runs.items():
        if codes.get(arm) != 0:
            continue
        if arm == "mace":
            results[arm] = mace_summary(run)
            continue
        results[arm] = summary(run, evaluate(run, files["test"], args.threads, None))
        results[arm]["hot"] = {
            name: evaluate(run, args.data / file, args.threads, None) for name, file in hot_sets(args).items()
        }
        results[arm]["checkpoint"] = str(run / "best.pt")
    report = {
        "dataset": args.dataset,
        "budget_s": args.budget,
        "threads": args.threads,
        "parallel": args.parallel,
        "mace_interactions": args.mace_interactions,
        "sets": args.set,
        "tag": args.tag,
        "exit_codes": codes,
        "results": results,
        "provenance": provenance(threads=args.threads, dtype="float32", sizes=sizes(files), load_before=load_before),
    }
    write_report(args.out, report, table(results))


if __name__ == "__main__":
    main()
