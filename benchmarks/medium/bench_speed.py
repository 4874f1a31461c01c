"""Medium models against MACE at the same size: training step, MD steps/s, energy+forces time and memory.

    .venv/bin/python benchmarks/medium/bench_speed.py --out benchmarks/results/medium_speed_threads1.json

Both sides in the same run on the same machine, one job at a time, ``--threads`` torch threads (default 1). The
mlip models are the medium recipes' (``recipes/3bpa/<family>-medium.yaml``: 128 channels, L = 2, 3 interactions,
cutoff 5 A); MACE is built with hidden irreps 128x0e + 128x1o + 128x2e, edge harmonics to max_ell 3, correlation
3 and ``--mace-interactions`` interactions (default 2: MACE's CLI default and MACE-OFF's medium model).

* ``train``: each trainer as a user runs it (``mlip train 3bpa/<family>-medium`` and ``acac/mace_train.py``, the
  protocol of ``run_accuracy.py``) for ``--train-seconds`` on 3BPA's 400-frame training split in batches of 5
  (27-atom molecules); the number is the trainer's own median step time (data + forward + forces + backward +
  optimiser + EMA), float32.
* ``md``: ASE velocity-Verlet steps/s (:func:`mace_calculator.time_md`, 1 fs, 300 K start) on the 27-atom 3BPA
  molecule, 64- and 1,000-atom periodic fcc Cu; untrained weights, float32; plus full calculations/s (forces, and
  stress where periodic) on the same systems.
* ``memory``: one energy+forces call (timed after a warm-up call) of 500- to 10,000-atom fcc Cu (about
  78 neighbours per atom within 5 A), each model and size in a fresh process under an address-space limit of
  ``--memory-limit-gb``, reporting the process's peak resident memory. The largest cell that fits in the machine's
  memory is extrapolated from a straight-line fit of peak memory against atoms (memory grows linearly with atoms
  at a fixed density); it is not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from mace_calculator import ELEMENTS, SYSTEMS, energy_forces_memory, time_calls, time_md  # noqa: E402
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

ROOT = HERE.parents[1]
DATA = ROOT.parent / "shared" / "data" / "3bpa"
FAMILIES = ("tdn", "gaunt", "cg", "transip")
MD_SYSTEMS = ("mol27", "cu64", "cu1000")
MEMORY_SYSTEMS = ("cu500", "cu1000", "cu2500", "cu5000", "cu10000")
MACE_SIZE = {"channels": 128, "lmax": 2, "max_ell": 3}
MACHINE_MEMORY_GB = 24.0


def medium_config(family: str, elements=ELEMENTS, **settings) -> dict:
    """The model section of ``family``'s 3BPA medium recipe for ``elements`` (default H, C, N, O and Cu), with
    ``avg_num_neighbors`` 20 where the family has it (as the trainer fills it from the data) and ``settings``."""
    from mlip_cli.models import config_class

    recipe = yaml.safe_load((ROOT / "recipes" / "3bpa" / f"{family}-medium.yaml").read_text())
    cfg = {**recipe["model"], "elements": list(elements), **settings}
    if "avg_num_neighbors" in config_class(family).allowed_keys():
        cfg.setdefault("avg_num_neighbors", 20.0)
    return cfg


def medium_model(family: str):
    """The untrained medium model of ``family`` (:func:`medium_config`), float32, in eval mode."""
    import torch

    from mlip_cli.models import build_model

    torch.manual_seed(0)
    return build_model(medium_config(family), dtype=torch.float32).eval()


def mace_size_args(interactions: int) -> list[str]:
    return [
        "--channels",
        str(MACE_SIZE["channels"]),
        "--lmax",
        str(MACE_SIZE["lmax"]),
        "--max-ell",
        str(MACE_SIZE["max_ell"]),
        "--interactions",
        str(interactions),
    ]


# ----------------------------------------------------------------------------------------------------- training


def train_rows(args, work: Path) -> list[dict]:
    rows = []
    for family in args.families:
        run = work / f"train-{family}"
        cmd = [sys.executable, "-m", "mlip_cli", "train", f"3bpa/{family}-medium", "--data"]
        cmd += [str(DATA / "train_300K.xyz"), "--time-budget", str(args.train_seconds), "--out", str(run)]
        cmd += ["--quiet", "--set", f"run.threads={args.threads}", "--set", f"data.e0s={DATA / 'iso_atoms.xyz'}"]
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
        t = yaml.safe_load((run / "result.yaml").read_text())
        rows.append(
            {"arm": family, "steps": t["steps"], "median_step_ms": t["timing"]["median_step_ms"], "source": cmd[3:5]}
        )
        print(f"train {family}: {rows[-1]['median_step_ms']:.1f} ms/step", file=sys.stderr, flush=True)
    for interactions in args.mace_interactions:
        out = work / f"train-mace{interactions}.json"
        cmd = [args.mace_python, str(HERE.parent / "acac" / "mace_train.py"), "--train-file"]
        cmd += [str(DATA / "train_300K.xyz"), "--split", "0.8,0.1,0.1", "--e0s-file", str(DATA / "iso_atoms.xyz")]
        cmd += ["--threads", str(args.threads), "--time-budget", str(args.train_seconds), "--out", str(out)]
        cmd += ["--num-channels", "128", "--max-L", "2", "--num-interactions", str(interactions)]
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
        t = json.loads(out.read_text())["training"]
        rows.append({"arm": f"mace{interactions}", "steps": t["steps"], "median_step_ms": t["median_step_ms"]})
        print(f"train mace{interactions}: {rows[-1]['median_step_ms']:.1f} ms/step", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------- MD


def md_rows(args) -> list[dict]:
    import torch

    from mlip_cli.calculator import MLIPCalculator

    torch.set_num_threads(args.threads)
    rows = []
    for family in args.families:
        model = medium_model(family)
        for name in args.md_systems:
            atoms = SYSTEMS[name]()
            atoms.calc = MLIPCalculator(model, always_stress=True)
            calls = time_calls(atoms, args.min_time)
            atoms = SYSTEMS[name]()
            atoms.calc = MLIPCalculator(model)
            steps = time_md(atoms, args.min_time)
            row = {"arm": family, "system": name, "natoms": len(atoms), "calls_per_s": calls, "md_steps_per_s": steps}
            rows.append(row)
            print(f"md {family} {name}: {steps:.3g} steps/s", file=sys.stderr, flush=True)
    for interactions in args.mace_interactions:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "mace.json"
            cmd = [args.mace_python, str(HERE.parent / "mace_calculator.py"), "--systems", ",".join(args.md_systems)]
            cmd += ["--dtypes", "float32", "--min-time", str(args.min_time), "--json", str(out)]
            subprocess.run(cmd + mace_size_args(interactions), check=True, capture_output=True, env=thread_env(args))
            for row in json.loads(out.read_text())["rows"]:
                rows.append(
                    {
                        "arm": f"mace{interactions}",
                        "system": row["system"],
                        "natoms": row["natoms"],
                        "calls_per_s": row["calls_per_s"],
                        "md_steps_per_s": row["md_steps_per_s"],
                    }
                )
                print(f"md mace{interactions} {row['system']}: {row['md_steps_per_s']:.3g} steps/s", file=sys.stderr)
    return rows


def thread_env(args) -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}


# ------------------------------------------------------------------------------------------------------- memory


def memory_child(family: str, system: str, limit_gb: float, threads: int, out: Path) -> None:
    """In a fresh process: :func:`mace_calculator.energy_forces_memory` of the mlip medium model."""
    import torch

    from mlip_cli.calculator import MLIPCalculator

    torch.set_num_threads(threads)
    atoms = SYSTEMS[system]()
    atoms.calc = MLIPCalculator(medium_model(family))
    out.write_text(json.dumps({"arm": family, "system": system, **energy_forces_memory(atoms, limit_gb)}))


def memory_rows(args, work: Path) -> list[dict]:
    rows = []
    arms = [(f, [sys.executable, __file__, "--memory-child", f]) for f in args.families]
    arms += [
        (f"mace{i}", [args.mace_python, str(HERE.parent / "mace_calculator.py"), "--dtypes", "float32"])
        for i in args.mace_interactions
    ]
    for arm, base in arms:
        for system in args.memory_systems:
            out = work / f"memory-{arm}-{system}.json"
            if arm.startswith("mace"):
                cmd = [*base, *mace_size_args(int(arm[4:])), "--memory", system, "--json", str(out)]
            else:
                cmd = [*base, system, "--json", str(out)]
            cmd += ["--memory-limit-gb", str(args.memory_limit_gb)]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=args.memory_timeout, env=thread_env(args))
            except subprocess.TimeoutExpired:
                rows.append({"arm": arm, "system": system, "fits": None, "error": f"over {args.memory_timeout} s"})
                continue
            except subprocess.CalledProcessError as exc:  # e.g. killed by an allocation failure outside torch
                error = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {exc.returncode}"]
                rows.append({"arm": arm, "system": system, "fits": False, "error": error[0][:200]})
                continue
            row = json.loads(out.read_text())
            row = row["rows"][0] if "rows" in row else row
            rows.append({**row, "arm": arm})
            print(
                f"memory {arm} {system}: {row.get('call_s', float('nan')):.3g} s, {row['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    return rows


def largest_cells(rows: list[dict]) -> dict:
    """Per arm: the straight-line fit of peak memory (MB) against atoms and the atoms that would fill the machine."""
    fits = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        pts = [(r["natoms"], r["peak_rss_mb"]) for r in rows if r["arm"] == arm and r.get("fits")]
        if len(pts) < 2:
            continue
        slope, intercept = np.polyfit(*zip(*pts), 1)
        fits[arm] = {
            "mb_per_atom": slope,
            "intercept_mb": intercept,
            "atoms_in_machine_memory": int((MACHINE_MEMORY_GB * 1024 - intercept) / slope),
            "extrapolated": True,
        }
    return fits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="train,md,memory")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--mace-interactions", nargs="+", type=int, default=[2])
    ap.add_argument("--md-systems", nargs="+", default=list(MD_SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--memory-systems", nargs="+", default=list(MEMORY_SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--mace-python", default="/work/venvs/mace/bin/python")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-seconds", type=float, default=90.0)
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per MD/calls measurement")
    ap.add_argument("--memory-limit-gb", type=float, default=18.0)
    ap.add_argument("--memory-timeout", type=float, default=900.0, help="seconds per memory measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "medium_speed_threads1.json")
    ap.add_argument("--resume", action="store_true", help="keep the parts an interrupted run finished")
    ap.add_argument("--memory-child", nargs=2, metavar=("FAMILY", "SYSTEM"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, args.memory_limit_gb, args.threads, args.json)
        return
    parts = args.parts.split(",")
    load_before = load_average()
    report: dict = {"threads": args.threads, "mace_size": MACE_SIZE, "mace_interactions": args.mace_interactions}
    # each finished part is kept in <out>.partial, so --resume after a failure skips what was already measured
    partial = args.out.with_name(args.out.name + ".partial")
    if args.resume and partial.exists():
        report.update(json.loads(partial.read_text()))
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        measure = {"train": lambda: train_rows(args, work), "md": lambda: md_rows(args)}
        measure["memory"] = lambda: memory_rows(args, work)
        for part in parts:
            if part not in report:
                report[part] = measure[part]()
                partial.write_text(json.dumps(report))
        if "memory" in parts:
            report["largest_cell"] = largest_cells(report["memory"])
    report["wall_s"] = time.time() - start
    sizes = {"train": "3BPA 400-frame split, batch 5", "md": args.md_systems, "memory": args.memory_systems}
    report["provenance"] = provenance(threads=args.threads, dtype="float32", sizes=sizes, load_before=load_before)
    write_report(args.out, report)
    partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
