"""`mlip export` artifacts against the Python model: time per call, load time and export time.

One ``tdn`` model (32 channels, L = 1, 2 interactions, cutoff 5 A, untrained: speed does not depend on the
weights) is exported in both formats; each artifact and the Python model (``DeployedPotential``, the same function
the artifact holds, run eagerly) compute energy, forces and stress of the same structures from the same tensors.

    python benchmarks/bench_export.py --out benchmarks/results/bench_export.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

CONFIG = {"family": "tdn", "elements": [1, 6, 8, 29], "cutoff": 5.0, "channels": 32, "lmax": 1, "num_interactions": 2}

# loads an artifact in a fresh process and times it: the load is what a deployment pays once
CLIENT = """
import sys, time, json
import numpy as np, torch
torch.set_num_threads(1)
path, fmt, inputs = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
if fmt == "aoti":
    model = torch._inductor.aoti_load_package(path)
else:
    model = torch.export.load(path).module()
load_s = time.perf_counter() - start
data = np.load(inputs)
out = {"load_s": load_s}
for name in ("molecule", "cell"):
    args = [torch.from_numpy(data[f"{name}_{k}"]) for k in range(8)]
    for _ in range(3):
        model(*args)
    times = []
    for _ in range(int(sys.argv[4])):
        t = time.perf_counter(); model(*args); times.append(time.perf_counter() - t)
    out[name] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


def structures():
    from ase.build import bulk, molecule

    mol = molecule("C6H6")
    mol += molecule("CH3CH2OH")
    mol.positions[12:] += [0.0, 0.0, 3.5]
    mol.info["name"] = "benzene + ethanol (21 atoms)"
    cell = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 4)
    cell.rattle(0.05, seed=0)
    cell.info["name"] = "fcc Cu (64 atoms)"
    return {"molecule": mol, "cell": cell}


def inputs(atoms, cutoff: float, dtype: torch.dtype) -> list[np.ndarray]:
    from ase.neighborlist import primitive_neighbor_list

    i, j, shifts = primitive_neighbor_list("ijS", atoms.pbc, atoms.cell.array, atoms.positions, cutoff)
    f = np.float64 if dtype == torch.float64 else np.float32
    return [
        atoms.positions.astype(f),
        atoms.numbers.astype(np.int64),
        atoms.cell.array.astype(f),
        atoms.pbc.copy(),
        np.stack([i, j]).astype(np.int64),
        shifts.astype(f),
        np.array(0.0, dtype=f),
        np.array(1.0, dtype=f),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_export.json")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    load_before = load_average()
    torch.set_num_threads(1)
    from mlip_cli.checkpoint import save_checkpoint
    from mlip_cli.export import DeployedPotential, export_model
    from mlip_cli.models import build_model

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    torch.manual_seed(0)
    model = build_model(dict(CONFIG), dtype=dtype).eval()
    systems = structures()
    work = Path(tempfile.mkdtemp(prefix="bench_export_"))
    ckpt = save_checkpoint(
        work / "model.pt",
        {"model_config": model.config.to_dict(), "dtype": args.dtype, "model_state": model.state_dict()},
    )
    arrays = {}
    for name, atoms in systems.items():
        for k, a in enumerate(inputs(atoms, CONFIG["cutoff"], dtype)):
            arrays[f"{name}_{k}"] = a
    np.savez(work / "inputs.npz", **arrays)

    rows = []
    deployed = DeployedPotential(model)
    python_row = {"path": "Python model"}
    for name in systems:
        args_t = [torch.from_numpy(arrays[f"{name}_{k}"]) for k in range(8)]
        for _ in range(3):
            deployed(*args_t)
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            deployed(*args_t)
            times.append(time.perf_counter() - t)
        python_row[name] = statistics.median(times)
    rows.append(python_row)
    for fmt in ("program", "aoti"):
        start = time.perf_counter()
        export_model(ckpt, work / f"model_{fmt}.pt2", fmt=fmt, dtype=args.dtype)
        export_s = time.perf_counter() - start
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENT,
                str(work / f"model_{fmt}.pt2"),
                fmt,
                str(work / "inputs.npz"),
                str(args.calls),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        import json

        timing = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"path": fmt, "export_s": export_s, **timing})
    python = rows[0]
    for row in rows[1:]:
        row["speedup"] = {name: python[name] / row[name] for name in systems}
    report = {
        "rows": rows,
        "systems": {name: atoms.info["name"] for name, atoms in systems.items()},
        "provenance": provenance(
            threads=1,
            dtype=args.dtype,
            sizes={"model": CONFIG, "calls": args.calls, **{n: len(a) for n, a in systems.items()}},
            load_before=load_before,
        ),
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
