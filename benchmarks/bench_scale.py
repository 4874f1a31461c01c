"""Training data at scale: a million-structure native store against a thousand-structure one.

Writes two native stores of synthetic OC20-like structures (20-200 atoms on rattled fcc sites of a slab, six
elements, energy and forces: the labels are synthetic, only their shapes matter here), then measures:

- ``mlip data info`` and ``mlip data stats`` on the million: seconds and peak RSS (each in its own process);
- 300 training steps of a small ``tdn`` with ``data.max_atoms`` packing, 1 compute thread and 1 data worker,
  on each store: start-up (process start to the first step: imports, opening, statistics, first batch),
  peak RSS of the training process and of its data worker, and the share of step time spent waiting for data.

Goals (issue 13): peak RSS of the million-structure run within 300 MB of the thousand-structure run, start-up
under 60 s, data wait under 5% of step time.

    python benchmarks/bench_scale.py --work bench_out/scale --out benchmarks/results/bench_scale.json
    python benchmarks/bench_scale.py --quick      # 2,000 and 200 structures, 20 steps: checks it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

ELEMENTS = np.array([29, 79, 46, 8, 6, 1])  # Cu Au Pd O C H
E0 = {29: -3.7, 79: -3.2, 46: -5.2, 8: -4.9, 6: -7.3, 1: -3.4}
LATTICE = 3.6  # A, fcc
CUTOFF = 4.0  # A: the first two fcc shells (18 neighbours in the bulk)


def synthetic_structures(n: int, seed: int):
    """``n`` slab-like structures of 20-200 atoms: fcc sites in a 4x4-cell periodic slab, rattled by 0.1 A."""
    from mlip_datasets.record import Structure

    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(13), indexing="ij"), -1).reshape(-1, 3)
    sites = ((grid[:, None, :] + base[None]).reshape(-1, 3) * LATTICE)[
        np.argsort(np.repeat(grid[:, 2], 4), kind="stable")
    ]
    cell = np.diag([4 * LATTICE, 4 * LATTICE, 13 * LATTICE + 15.0])
    e0 = np.array([E0[int(z)] for z in ELEMENTS])
    for _ in range(n):
        natoms = int(rng.integers(20, 201))
        kinds = rng.choice(len(ELEMENTS), size=natoms, p=[0.4, 0.2, 0.2, 0.08, 0.06, 0.06])
        positions = sites[:natoms] + rng.normal(0, 0.1, size=(natoms, 3))
        yield Structure(
            numbers=ELEMENTS[kinds],
            positions=positions,
            cell=cell,
            pbc=[True, True, False],
            energy=float(e0[kinds].sum() + rng.normal(0, 0.5)),
            forces=rng.normal(0, 0.3, size=(natoms, 3)),
            fixed=positions[:, 2] < 2 * LATTICE,
        )


def write_store(path: Path, n: int, seed: int) -> float:
    from mlip_datasets.io import write_dataset

    if (path / "done").exists():
        return json.loads((path / "done").read_text())["seconds"]
    start = time.perf_counter()
    write_dataset(path, synthetic_structures(n, seed), "native", shards=4, overwrite=True)
    seconds = time.perf_counter() - start
    (path / "done").write_text(json.dumps({"n": n, "seconds": seconds}))
    return seconds


def measured(argv: list[str]) -> dict:
    """Run ``argv`` in a child of a fresh Python, returning wall seconds and the child's peak RSS (MB)."""
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "seconds = time.perf_counter() - start\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': done.returncode, 'seconds': seconds, 'peak_mb': peak, 'err': done.stderr[-2000:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_run(store: str, run_dir: str, steps: int) -> None:
    """The training measurement, in this (fresh) process: prints one JSON line."""
    import torch

    started = time.perf_counter()
    from mlip_cli.train import Recipe, run_training

    torch.set_num_threads(1)
    first_step: list[float] = []

    def progress_factory(total, unit):
        import contextlib

        @contextlib.contextmanager
        def bar():
            def update(completed=None, **values):
                if completed and not first_step:
                    first_step.append(time.perf_counter())

            yield update

        return bar()

    recipe = Recipe.from_dict(
        {
            "name": "scale",
            "model": {"family": "tdn", "cutoff": CUTOFF, "channels": 32, "lmax": 1, "num_interactions": 2},
            "data": {
                "train": store,
                "split": [0.999, 0.001],
                "batch_size": 10_000,
                "max_atoms": 2000,
                "num_workers": 1,
                "max_valid": 20,
            },
            "optim": {"lr": 2e-3, "warmup_steps": 10},
            "run": {"max_steps": steps, "valid_every": steps, "threads": 1, "seed": 0, "log_every": 1},
        }
    )
    result = run_training(recipe, Path(run_dir), progress_factory=progress_factory)
    end = time.perf_counter()
    t = result.timing
    print(
        json.dumps(
            {
                "startup_s": first_step[0] - started if first_step else None,
                "total_s": end - started,
                "steps": result.steps,
                "step_ms": 1000 * (t["data_s"] + t["compute_s"]) / max(result.steps, 1),
                "data_wait_share": t["data_s"] / max(t["data_s"] + t["compute_s"], 1e-12),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench_out/scale"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_scale.json")
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="2,000 and 200 structures, 20 steps")
    parser.add_argument("--train-run", nargs=3, metavar=("STORE", "RUN_DIR", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_run:
        train_run(args.train_run[0], args.train_run[1], int(args.train_run[2]))
        return
    if args.quick:
        args.large, args.small, args.steps = 2_000, 200, 20
        args.out = args.work / "bench_scale_quick.json"
    load_before = load_average()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mlip = [sys.executable, "-m", "mlip_cli"]
    stores = {
        "small": (args.work / f"store_{args.small}", args.small),
        "large": (args.work / f"store_{args.large}", args.large),
    }
    report: dict = {"stores": {}, "data_commands": {}, "training": {}}
    for name, (path, n) in stores.items():
        seconds = write_store(path, n, seed=1 if name == "small" else 2)
        size = sum(f.stat().st_size for f in path.glob("*.lmdb") if f.is_file())
        report["stores"][name] = {"structures": n, "write_s": seconds, "bytes": size}
        print(f"{name}: {n} structures, {size / 1e9:.2f} GB, written in {seconds:.0f} s", flush=True)
    large = str(stores["large"][0])
    for command in ("info", "stats"):
        report["data_commands"][command] = measured([*mlip, "data", command, large, "--json"])
        print(command, report["data_commands"][command], flush=True)
    for name, (path, _) in stores.items():
        run_dir = args.work / f"run_{name}"
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        out = subprocess.run(
            [sys.executable, __file__, "--train-run", str(path), str(run_dir), str(args.steps)],
            capture_output=True,
            text=True,
            env=env,
        )
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        report["training"][name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, report["training"][name], flush=True)
    small, large_run = report["training"]["small"], report["training"]["large"]
    report["summary"] = {
        "rss_difference_mb": large_run["peak_rss_mb"] - small["peak_rss_mb"],
        "startup_large_s": large_run["startup_s"],
        "data_wait_share_large": large_run["data_wait_share"],
        "goals": {"rss_difference_mb": 300, "startup_s": 60, "data_wait_share": 0.05},
    }
    report["provenance"] = provenance(
        threads=1,
        dtype="float32",
        sizes={"large": args.large, "small": args.small, "steps": args.steps, "max_atoms": 2000, "workers": 1},
        load_before=load_before,
    )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
