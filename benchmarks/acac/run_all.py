"""Acetylacetone benchmark driver: `mlip train acac/<family>` for tdn, gaunt, cg and MACE's side, same budget.

Runs the jobs (``--parallel`` at a time, each with ``--threads`` torch threads), then writes one JSON with every
number and prints a Markdown table (test RMSEs, steps, structures/s, median step time, ratio to MACE).

    python benchmarks/acac/run_all.py --budget 1200 --threads 1 --parallel 2 \
        --out benchmarks/results/acac_20min.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "acac"
# the protocol (benchmarks/acac/README.md; recipes/acac/*.yaml)
SIZES = {"train": 450, "valid": 50, "test": 650, "batch_size": 5, "atoms": 15}


def mlip_job(family: str, args, work: Path) -> tuple[list[str], Path]:
    run = work / f"acac-{family}"
    cmd = [
        sys.executable,
        "-m",
        "mlip_cli",
        "train",
        f"acac/{family}",
        "--data",
        str(args.data / "train_300K.xyz"),
        "--test-data",
        str(args.data / "test_MD_300K.xyz"),
        "--time-budget",
        str(args.budget),
        "--out",
        str(run),
        "--set",
        f"run.threads={args.threads}",
        "--quiet",
    ]
    return cmd, run


def mace_job(args, work: Path) -> tuple[list[str], Path]:
    out = work / "mace.json"
    cmd = [
        args.mace_python,
        str(ROOT / "benchmarks" / "acac" / "mace_train.py"),
        "--threads",
        str(args.threads),
        "--time-budget",
        str(args.budget),
        "--train-file",
        str(args.data / "train_300K.xyz"),
        "--test-file",
        str(args.data / "test_MD_300K.xyz"),
        "--out",
        str(out),
    ]
    return cmd, out


def run_jobs(jobs: dict[str, list[str]], parallel: int, logs: Path) -> dict[str, int]:
    pending, running, codes = list(jobs.items()), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name, cmd = pending.pop(0)
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115  (closed when the job ends, below)
            print(f"start {name}: {' '.join(cmd)}", flush=True)
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log)
        time.sleep(2)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                codes[name] = proc.returncode
                print(f"done  {name}: exit {proc.returncode}", flush=True)
                del running[name]
    return codes


def mlip_numbers(run: Path) -> dict:
    import torch

    result = yaml.safe_load((run / "result.yaml").read_text())
    ckpt = torch.load(run / "best.pt", weights_only=True, map_location="cpu")
    params = sum(
        v.numel()
        for k, v in ckpt["model_state"].items()
        if v.is_floating_point() and not k.endswith((".A", ".B", ".C", "cg_tensor"))
    )
    t, test = result["timing"], result["test"]
    return {
        "steps": result["steps"],
        "structures_per_s": t["structures_per_s"],
        "median_step_ms": t["median_step_ms"],
        "train_s": t["train_s"],
        "test_energy_rmse_meV": test["energy_rmse"],
        "test_energy_rmse_meV_per_atom": test["energy_per_atom_rmse"],
        "test_forces_rmse": test["forces_rmse"],
        "test_forces_mae": test["forces_mae"],
        "parameters_approx": params,
        "raw": result,
    }


def mace_numbers(path: Path) -> dict:
    d = json.loads(path.read_text())
    tr, test = d["training"], d["test"]
    return {
        "steps": tr["steps"],
        "structures_per_s": tr["structures_per_s"],
        "median_step_ms": tr["median_step_ms"],
        "train_s": tr["train_s"],
        "test_energy_rmse_meV": test["energy_rmse_meV"],
        "test_energy_rmse_meV_per_atom": test["energy_rmse_meV_per_atom"],
        "test_forces_rmse": test["forces_rmse_meV_per_A"],
        "test_forces_mae": test["forces_mae_meV_per_A"],
        "parameters_approx": d["parameters"],
        "raw": d,
    }


def table(results: dict) -> str:
    mace = results.get("mace")
    lines = [
        "| model | test E RMSE (meV) | test E RMSE (meV/atom) | test F RMSE (meV/A) | steps | structures/s | "
        "median step (ms) | throughput vs MACE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ratio = f"{r['structures_per_s'] / mace['structures_per_s']:.2f}x" if mace else "-"
        lines.append(
            f"| {name} | {r['test_energy_rmse_meV']:.2f} | {r['test_energy_rmse_meV_per_atom']:.3f} | "
            f"{r['test_forces_rmse']:.1f} | {r['steps']} | {r['structures_per_s']:.1f} | "
            f"{r['median_step_ms']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=1200, help="training seconds per model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=1, help="jobs at a time (each with --threads threads)")
    p.add_argument("--families", nargs="+", default=["tdn", "gaunt", "cg"])
    p.add_argument(
        "--mace-python", default="/work/venvs/mace/bin/python", help="python of the MACE venv; '' to skip MACE"
    )
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--work", type=Path, default=ROOT / "bench_out" / "acac")
    p.add_argument("--out", type=Path, default=ROOT / "bench_out" / "acac.json")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    jobs, where = {}, {}
    for family in args.families:
        cmd, run = mlip_job(family, args, args.work)
        if run.exists():
            import shutil

            shutil.rmtree(run)
        jobs[family], where[family] = cmd, run
    if args.mace_python:
        jobs["mace"], where["mace"] = mace_job(args, args.work)
    load_before = load_average()
    codes = run_jobs(jobs, args.parallel, args.work)
    results = {}
    for name, path in where.items():
        if codes.get(name) == 0:
            results[name] = mace_numbers(path) if name == "mace" else mlip_numbers(path)
    report = {
        "budget_s": args.budget,
        "threads": args.threads,
        "parallel": args.parallel,
        "exit_codes": codes,
        "provenance": provenance(threads=args.threads, dtype="float32", sizes=SIZES, load_before=load_before),
        "results": results,
    }
    write_report(args.out, report, table(results))


if __name__ == "__main__":
    main()
