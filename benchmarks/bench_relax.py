"""Batched relaxation (one model call per step for all structures) against a loop of ASE optimizers.

    .venv/bin/python benchmarks/bench_relax.py --out benchmarks/results/bench_relax.json

100 small EMT molecules (``mlip_datasets.generate``, rattled 0.15 A), the same model and fmax on both sides:

* ``ase-loop``: for each structure ``FIRE(atoms).run(fmax, steps)`` (or LBFGS) with one
  :class:`~mlip_cli.calculator.MLIPCalculator`, one model call per step per structure;
* ``batched``: :func:`mlip_cli.relax.relax_structures` (``mlip relax``'s default path): the same algorithms in
  torch over all structures, one model call per step for all of them.

The batched optimizers reproduce ASE's step for step (``tests/ase/test_relax_batched.py``), so both sides take
the same number of steps per structure; the table reports both totals. One torch thread; each time is the
median of ``--repeats`` alternating rounds. The model is a tiny tdn trained here for a few hundred steps on
EMT molecules (``--model`` to use another checkpoint), so the relaxations end in sensible minima.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)


def train_model(run_dir: Path) -> Path:
    from mlip_cli.train import Recipe, run_training

    recipe = Recipe.from_dict(
        {
            "name": "bench-relax",
            "model": {
                "family": "tdn",
                "cutoff": 4.5,
                "channels": 16,
                "lmax": 1,
                "num_interactions": 2,
                "num_radial": 8,
                "radial_hidden": 32,
                "readout_hidden": 16,
            },
            "data": {
                "generate": {"kind": "molecule", "n": 300, "seed": 0, "rattle": 0.1},
                "split": [0.9, 0.1],
                "batch_size": 8,
            },
            "optim": {"lr": 0.005, "warmup_steps": 20},
            "run": {"max_steps": 400, "valid_every": 200, "seed": 0, "dtype": "float32", "device": "cpu", "threads": 1},
        }
    )
    run_training(recipe, run_dir, log=lambda *a, **k: None)
    return run_dir / "best.pt"


def ase_loop(model, structures, optimizer: str, fmax: float, steps: int) -> dict:
    from mlip_cli.calculator import MLIPCalculator
    from mlip_cli.relax.ase_path import ase_optimizer

    calc = MLIPCalculator(model)
    cls = ase_optimizer(optimizer)
    total, converged = 0, 0
    start = time.perf_counter()
    for s in structures:
        atoms = s.to_atoms()
        atoms.calc = calc
        opt = cls(atoms, logfile=None)
        converged += bool(opt.run(fmax=fmax, steps=steps))
        total += opt.nsteps
    return {
        "seconds": time.perf_counter() - start,
        "steps": total,
        "converged": converged,
        "model_calls": calc.model_calls,
    }


def batched(model, structures, optimizer: str, fmax: float, steps: int) -> dict:
    from mlip_cli.relax import relax_structures

    start = time.perf_counter()
    results = relax_structures(model, structures, optimizer, fmax, steps, batched=True)
    return {
        "seconds": time.perf_counter() - start,
        "steps": sum(r.steps for r in results),
        "converged": sum(r.converged for r in results),
        "model_calls": max(r.steps for r in results) + 1,
    }


def main() -> None:
    import torch

    from mlip_cli.checkpoint import load_model
    from mlip_datasets.generate import generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="checkpoint (default: train a tiny tdn here)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--optimizers", default="FIRE,LBFGS")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_relax.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.model or train_model(Path(tmp) / "run")
        model = load_model(ckpt, dtype=args.dtype)
    structures = list(generate("molecule", args.n, seed=1, rattle=0.15))
    rows = []
    for optimizer in args.optimizers.split(","):
        runs = {"ase-loop": [], "batched": []}
        for _ in range(args.repeats):
            runs["ase-loop"].append(ase_loop(model, structures, optimizer, args.fmax, args.steps))
            runs["batched"].append(batched(model, structures, optimizer, args.fmax, args.steps))
        for path, rs in runs.items():
            rows.append(
                {
                    "optimizer": optimizer,
                    "path": path,
                    "seconds": statistics.median(r["seconds"] for r in rs),
                    "seconds_all": [r["seconds"] for r in rs],
                    "steps": rs[0]["steps"],
                    "converged": rs[0]["converged"],
                    "model_calls": rs[0]["model_calls"],
                }
            )
            print(
                f"{optimizer} {path}: {rows[-1]['seconds']:.2f} s, {rows[-1]['steps']} steps, "
                f"{rows[-1]['converged']}/{args.n} converged",
                file=sys.stderr,
                flush=True,
            )
        rows[-1]["speedup"] = rows[-2]["seconds"] / rows[-1]["seconds"]
    natoms = [s.natoms for s in structures]
    meta = {
        "provenance": provenance(
            threads=1,
            dtype=args.dtype,
            load_before=load_before,
            sizes={"structures": args.n, "atoms_min_mean_max": [min(natoms), sum(natoms) / len(natoms), max(natoms)]},
        ),
        "fmax": args.fmax,
        "max_steps": args.steps,
        "model": str(args.model)
        if args.model
        else "tdn 16 ch, L=1, 2 interactions, cutoff 4.5, trained 400 steps on 300 EMT molecules",
        "repeats": args.repeats,
    }
    lines = [
        "| optimizer | path | time (s) | total steps | model calls | converged | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['path']} | {r['seconds']:.2f} | {r['steps']} | {r['model_calls']} | "
            f"{r['converged']}/{args.n} | {r.get('speedup', 1.0):.1f}x |"
        )
    write_report(args.out, {"meta": meta, "rows": rows}, "\n".join(lines))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
