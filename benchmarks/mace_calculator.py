"""MACE side of the calculator benchmark, plus the systems and timing loops both sides share.

Run inside the MACE virtual environment (mace-torch and its own torch); imports nothing from mlip:

    /work/venvs/mace/bin/python benchmarks/mace_calculator.py --systems cu64,mol15 --dtypes float32 --json out.json

The module-level code needs only numpy and ASE, so ``bench_calculator.py`` (the mlip side and the driver)
imports :data:`SYSTEMS`, :func:`time_calls` and :func:`time_md` from here: both sides build the same
structures and time them with the same loops.

What is timed (per system and dtype, after two warm-up calls):

* calls/s: ``atoms.get_forces()`` (and ``atoms.get_stress()`` for periodic systems) after moving one atom by
  1e-6 A, so every call is a full calculation (neighbour list, model, forces; stress where periodic).
* MD steps/s: ASE velocity Verlet, 1 fs, from 300 K Maxwell-Boltzmann velocities (one model call per step).

The MACE model: ``ScaleShiftMACE`` with hidden irreps ``32x0e + 32x1o`` (32 channels, L = 1), ``max_ell = 1``,
2 interactions, r_max 5 A, 8 Bessel functions, polynomial cutoff p = 6, correlation 3, radial MLP [64, 64, 64],
``RealAgnosticResidualInteractionBlock`` (mace-torch's defaults for the rest), untrained; saved with
``torch.save`` and loaded by ``mace.calculators.MACECalculator(model_paths=...)`` as a user would.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ELEMENTS = [1, 6, 7, 8, 29]  # H C N O Cu: both models are built for these
CUTOFF = 5.0
CHANNELS, LMAX, NUM_INTERACTIONS = 32, 1, 2


def _cu(repeat):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeat
    atoms.rattle(0.05, seed=0)
    return atoms


def _mol15():
    from ase.collections import s22

    atoms = s22["Benzene-water_complex"]  # C6H6 + H2O, 15 atoms, no cell
    atoms.rattle(0.02, seed=0)
    return atoms


def _mol27():
    from ase.io import read

    # the first frame of 3BPA's training file (27 atoms, no cell): the repository's sibling ../shared/data
    return read(Path(__file__).resolve().parents[2] / "shared" / "data" / "3bpa" / "train_300K.xyz", 0)


#: the calculator benchmark's systems (``bench_calculator.py``); the others serve the medium-size benchmark.
CALCULATOR_SYSTEMS = ("cu64", "cu1000", "mol15")
#: name -> builder of the ASE Atoms (fresh copy each call).
SYSTEMS = {
    "cu64": lambda: _cu((2, 2, 4)),  # 64-atom periodic fcc Cu
    "cu1000": lambda: _cu((5, 5, 10)),  # 1,000-atom periodic fcc Cu
    "mol15": _mol15,  # 15-atom molecule (benzene-water), non-periodic
    "mol27": _mol27,  # 27-atom molecule (3BPA), non-periodic
    # periodic fcc Cu for energy+forces time and memory
    "cu500": lambda: _cu((5, 5, 5)),
    "cu2500": lambda: _cu((5, 5, 25)),
    "cu5000": lambda: _cu((5, 10, 25)),
    "cu10000": lambda: _cu((10, 10, 25)),
}


def time_calls(atoms, min_time: float = 2.0, min_calls: int = 3) -> float:
    """Full calculations per second (forces, plus stress for periodic systems); see the module docstring."""
    periodic = bool(atoms.pbc.any())

    def call(k: int) -> None:
        atoms.positions[0, 0] += 1e-6 if k % 2 == 0 else -1e-6
        atoms.get_forces()
        if periodic:
            atoms.get_stress()

    for k in range(2):
        call(k)
    count, start = 0, time.perf_counter()
    while count < min_calls or time.perf_counter() - start < min_time:
        call(count)
        count += 1
    return count / (time.perf_counter() - start)


def time_md(atoms, min_time: float = 2.0, min_steps: int = 3, seed: int = 0) -> float:
    """Velocity-Verlet steps per second (1 fs, 300 K start)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.run(2)
    count, start = 0, time.perf_counter()
    while count < min_steps or time.perf_counter() - start < min_time:
        dyn.run(1)
        count += 1
    return count / (time.perf_counter() - start)


def energy_forces_memory(atoms, memory_limit_gb: float) -> dict:
    """One energy+forces call timed after a warm-up call, and this process's peak resident memory.

    Run in a fresh process per (model, system), so the peak belongs to that pair. The address space is limited to
    ``memory_limit_gb`` first, so a model that needs more fails with an allocation error instead of exhausting the
    machine; that case is reported as ``fits: False``.
    """
    import resource

    limit = int(memory_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rss_before = peak_rss_mb()
    row = {"natoms": len(atoms), "memory_limit_gb": memory_limit_gb, "rss_before_mb": rss_before}
    try:
        start = time.perf_counter()
        atoms.get_forces()
        row["first_call_s"] = time.perf_counter() - start
        atoms.positions[0, 0] += 1e-6
        start = time.perf_counter()
        atoms.get_forces()
        row["call_s"] = time.perf_counter() - start
        row["fits"] = True
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as a RuntimeError
        row["fits"], row["error"] = False, str(exc).splitlines()[0][:200]
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB) from ``VmHWM``: unlike ``getrusage``'s ``ru_maxrss``, which Linux
    carries across ``execve`` (a fresh child would report its parent's peak), it starts afresh in each process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (peak memory is measured on Linux only)")


def build_mace(
    dtype: str,
    path: str,
    channels: int = CHANNELS,
    lmax: int = LMAX,
    max_ell: int = LMAX,
    interactions: int = NUM_INTERACTIONS,
) -> str:
    """Build an untrained MACE model in ``dtype`` and ``torch.save`` it to ``path``: the module docstring's
    (the defaults) or, with the keywords, hidden irreps ``channels`` x (0e + 1o + ... up to ``lmax``), edge
    harmonics to ``max_ell`` and ``interactions`` interactions."""
    import torch
    from e3nn import o3
    from mace import modules

    torch.set_default_dtype(torch.float64 if dtype == "float64" else torch.float32)
    torch.manual_seed(0)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=CUTOFF,
        num_bessel=8,
        num_polynomial_cutoff=6,
        max_ell=max_ell,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=interactions,
        num_elements=len(ELEMENTS),
        hidden_irreps=o3.Irreps((channels * o3.Irreps.spherical_harmonics(lmax)).sort()[0].simplify()),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(ELEMENTS)),
        avg_num_neighbors=20.0,
        atomic_numbers=ELEMENTS,
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    torch.save(model, path)
    return path


def run_mace(
    systems: list[str], dtypes: list[str], min_time: float, repeats: int, device: str = "cpu", **size
) -> list[dict]:
    """Time MACE's calculator; one row per (system, dtype) with the median over ``repeats``; ``size``: the
    keywords of :func:`build_mace`."""
    import os
    import tempfile

    import torch
    from mace.calculators import MACECalculator

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            path = build_mace(dtype, os.path.join(tmp, f"mace_{dtype}.model"), **size)
            calc = MACECalculator(model_paths=path, device=device, default_dtype=dtype)
            for name in systems:
                calls, steps = [], []
                for _ in range(repeats):
                    atoms = SYSTEMS[name]()
                    atoms.calc = calc
                    calls.append(time_calls(atoms, min_time))
                    atoms = SYSTEMS[name]()
                    atoms.calc = calc
                    steps.append(time_md(atoms, min_time))
                rows.append(
                    {
                        "side": "mace",
                        "family": "mace",
                        "system": name,
                        "natoms": len(SYSTEMS[name]()),
                        "dtype": dtype,
                        "calls_per_s": statistics.median(calls),
                        "md_steps_per_s": statistics.median(steps),
                        "calls_all": calls,
                        "md_all": steps,
                    }
                )
                print(
                    f"mace {name} {dtype}: {rows[-1]['calls_per_s']:.2f} calls/s, "
                    f"{rows[-1]['md_steps_per_s']:.2f} steps/s",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def memory_row(system: str, dtype: str, memory_limit_gb: float, size: dict) -> dict:
    """:func:`energy_forces_memory` of MACE's calculator on ``system`` (run in a fresh process)."""
    import os
    import tempfile

    import torch
    from mace.calculators import MACECalculator

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_mace(dtype, os.path.join(tmp, "mace.model"), **size)
        atoms = SYSTEMS[system]()
        atoms.calc = MACECalculator(model_paths=path, device="cpu", default_dtype=dtype)
        row = energy_forces_memory(atoms, memory_limit_gb)
    return {"side": "mace", "family": "mace", "system": system, "dtype": dtype, **row}


def main() -> None:
    import mace
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default=",".join(CALCULATOR_SYSTEMS))
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--channels", type=int, default=CHANNELS)
    ap.add_argument("--lmax", type=int, default=LMAX, help="highest degree of the hidden features")
    ap.add_argument("--max-ell", type=int, default=LMAX, help="highest degree of the edge harmonics")
    ap.add_argument("--interactions", type=int, default=NUM_INTERACTIONS)
    ap.add_argument("--memory", metavar="SYSTEM", help="only time one energy+forces call of SYSTEM and the peak memory")
    ap.add_argument("--memory-limit-gb", type=float, default=20.0, help="address-space limit of --memory")
    ap.add_argument("--device", default="cpu", help="where MACE runs (the timing rows)")
    ap.add_argument("--json", required=True, help="write rows here")
    args = ap.parse_args()
    size = {"channels": args.channels, "lmax": args.lmax, "max_ell": args.max_ell, "interactions": args.interactions}
    if args.memory:
        rows = [memory_row(args.memory, args.dtypes.split(",")[0], args.memory_limit_gb, size)]
    else:
        rows = run_mace(
            args.systems.split(","), args.dtypes.split(","), args.min_time, args.repeats, device=args.device, **size
        )
    meta = {"mace_version": getattr(mace, "__version__", "?"), "torch": torch.__version__, "threads": 1, **size}
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
