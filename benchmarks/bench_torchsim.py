"""Batched NVE in TorchSim (one model call per step for all molecules) against a loop of ASE velocity Verlet runs.

    .venv/bin/python benchmarks/bench_torchsim.py --out benchmarks/results/bench_torchsim.json
    .venv/bin/python benchmarks/bench_torchsim.py --quick      # a few molecules and steps: checks it runs

100 molecules of 10-30 atoms (G2 molecules of 10-14 atoms, and pairs of them 4 A apart, randomly turned and
rattled), the same model, timestep and initial momenta (Maxwell-Boltzmann at 300 K) on both sides:

* ``ase-loop``: for each molecule ``VelocityVerlet(atoms, dt).run(steps)`` with its own
  :class:`~mlip_cli.calculator.MLIPCalculator` (its own skin neighbour list), one model call per step per
  molecule;
* ``torchsim``: TorchSim's NVE (``ts.nve``, velocity Verlet) on one ``SimState`` of all molecules with
  :class:`mlip_cli.torchsim.MLIPModel`, one model call per step for all of them.

Reported: molecule-steps per second on each side (molecules x steps / seconds) and the speed-up; each time is
the median of ``--repeats`` alternating rounds after a short warm-up, one torch thread. The model is an untrained
tdn (32 channels, L = 1, 2 interactions, cutoff 5 A, float32) with its energy scale set so that forces are
about 1 eV/A: the cost of a step does not depend on the weights, only on how often neighbour lists are
rebuilt. The largest final position difference between the two sides is recorded as a sanity check (float32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

ELEMENTS = [1, 6, 7, 8, 16, 17]  # what the G2 molecules of 10-14 atoms contain
FORCE_SCALE = 0.004  # interaction-energy scale of the untrained model (main)
MODEL = {
    "family": "tdn",
    "elements": ELEMENTS,
    "cutoff": 5.0,
    "channels": 32,
    "lmax": 1,
    "num_interactions": 2,
    "num_radial": 8,
    "radial_hidden": 32,
    "readout_hidden": 16,
}


def molecules(n: int, seed: int = 0):
    """``n`` molecules of 10-28 atoms: a G2 molecule of 10-14 atoms, or (half the time) two of them 4 A apart."""
    from ase import Atoms
    from ase.build import molecule
    from ase.collections import g2
    from scipy.spatial.transform import Rotation

    names = sorted(name for name, a in zip(g2.names, g2) if 10 <= len(a) <= 14)
    rng = np.random.default_rng(seed)

    def turned(name: str) -> Atoms:
        atoms = molecule(name)
        atoms.positions = (atoms.positions - atoms.positions.mean(axis=0)) @ Rotation.random(
            random_state=rng
        ).as_matrix().T
        return atoms

    out = []
    for _ in range(n):
        atoms = turned(names[rng.integers(len(names))])
        if rng.random() < 0.5:
            other = turned(names[rng.integers(len(names))])
            gap = np.ptp(atoms.positions[:, 0]) / 2 + np.ptp(other.positions[:, 0]) / 2 + 4.0
            other.positions += [gap, 0.0, 0.0]
            atoms += other
        atoms.rattle(0.02, seed=int(rng.integers(2**31)))
        out.append(atoms)
    return out


def initial_momenta(systems, temperature_k: float, seed: int) -> list[np.ndarray]:
    from ase.units import kB

    rng = np.random.default_rng(seed)
    return [rng.normal(size=(len(a), 3)) * np.sqrt(a.get_masses()[:, None] * kB * temperature_k) for a in systems]


def ase_loop(model, systems, momenta, steps: int, dt: float) -> dict:
    from ase.md.verlet import VelocityVerlet

    from mlip_cli.calculator import MLIPCalculator

    runs = []
    for atoms, p in zip(systems, momenta):
        atoms = atoms.copy()
        atoms.set_momenta(p)
        atoms.calc = MLIPCalculator(model)
        runs.append(atoms)
    start = time.perf_counter()
    for atoms in runs:
        VelocityVerlet(atoms, timestep=dt, logfile=None).run(steps)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "positions": np.concatenate([a.positions for a in runs])}


def torchsim_nve(model, systems, momenta, steps: int, dt: float) -> dict:
    import torch
    import torch_sim as ts

    from mlip_cli.torchsim import MLIPModel

    ts_model = MLIPModel(model, compute_stress=False)
    start = time.perf_counter()
    init, update = ts.nve(ts_model, dt=torch.tensor(dt, dtype=ts_model.dtype), kT=torch.tensor(0.0))
    state = init(ts.io.atoms_to_state(systems, ts_model.device, ts_model.dtype))
    state.momenta = torch.as_tensor(np.concatenate(momenta), dtype=ts_model.dtype)
    for _ in range(steps):
        state = update(state)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "positions": state.positions.double().numpy()}


def main() -> None:
    import torch
    from ase.units import fs

    from mlip_cli.models import build_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="molecules")
    ap.add_argument("--steps", type=int, default=50, help="MD steps per run")
    ap.add_argument("--timestep-fs", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=300.0, help="K, for the initial momenta")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4 molecules, 3 steps, 1 round: checks that it runs")
    ap.add_argument(
        "--out", type=Path, help="JSON report (default: results/bench_torchsim.json; a temp file with --quick)"
    )
    args = ap.parse_args()
    if args.quick:
        args.n, args.steps, args.repeats = 4, 3, 1
    out = args.out or (
        Path(tempfile.mkdtemp()) / "bench_torchsim.json" if args.quick else HERE / "results" / "bench_torchsim.json"
    )
    torch.set_num_threads(1)
    load_before = load_average()
    torch.manual_seed(0)
    model = build_model(MODEL, dtype=getattr(torch, args.dtype)).eval()
    # untrained weights give forces of ~250 eV/A; scaled to ~1 eV/A the atoms move as in 300 K MD (neighbour lists
    # are rebuilt at a realistic rate) instead of flying apart
    model.set_statistics(scale=FORCE_SCALE)
    systems = molecules(args.n)
    momenta = initial_momenta(systems, args.temperature, seed=1)
    dt = args.timestep_fs * fs
    ase_loop(model, systems[:2], momenta[:2], 2, dt)  # warm-up: first calls allocate and pick kernels
    torchsim_nve(model, systems[:2], momenta[:2], 2, dt)
    runs = {"ase-loop": [], "torchsim": []}
    for _ in range(args.repeats):
        runs["ase-loop"].append(ase_loop(model, systems, momenta, args.steps, dt))
        runs["torchsim"].append(torchsim_nve(model, systems, momenta, args.steps, dt))
    rows = []
    for path, rs in runs.items():
        seconds = statistics.median(r["seconds"] for r in rs)
        rows.append(
            {
                "path": path,
                "seconds": seconds,
                "seconds_all": [r["seconds"] for r in rs],
                "molecule_steps_per_s": args.n * args.steps / seconds,
                "model_calls": args.n * (args.steps + 1) if path == "ase-loop" else args.steps + 1,
            }
        )
        print(f"{path}: {seconds:.2f} s, {rows[-1]['molecule_steps_per_s']:.0f} molecule-steps/s", file=sys.stderr)
    rows[-1]["speedup"] = rows[0]["seconds"] / rows[-1]["seconds"]
    max_diff = float(np.abs(runs["ase-loop"][0]["positions"] - runs["torchsim"][0]["positions"]).max())
    natoms = [len(a) for a in systems]
    meta = {
        "provenance": provenance(
            threads=1,
            dtype=args.dtype,
            load_before=load_before,
            sizes={
                "molecules": args.n,
                "atoms_min_mean_max": [min(natoms), sum(natoms) / len(natoms), max(natoms)],
                "atoms_total": sum(natoms),
                "steps": args.steps,
            },
        ),
        "model": f"untrained tdn, 32 channels, L=1, 2 interactions, cutoff 5 A, scale {FORCE_SCALE} (forces ~1 eV/A)",
        "timestep_fs": args.timestep_fs,
        "temperature_k": args.temperature,
        "repeats": args.repeats,
        "max_final_position_difference_A": max_diff,
    }
    lines = [
        "| path | time (s) | molecule-steps/s | model calls | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['seconds']:.2f} | {r['molecule_steps_per_s']:.0f} | {r['model_calls']} | "
            f"{r.get('speedup', 1.0):.1f}x |"
        )
    write_report(out, {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
