"""Read throughput of the native store vs aselmdb vs legacy OC20 LMDB, and conversion times.

Generates OC20-like slab+adsorbate frames (4x4x4 slabs plus an adsorbate: about 66 atoms) with EMT once,
writes them in each format, then reads every record in a shuffled order (as a training epoch does).

    python benchmarks/bench_data.py --n 10000 --out bench_out/data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from mlip_datasets.generate import generate
from mlip_datasets.io import open_dataset, write_dataset

FORMATS = {"native": "store", "aselmdb": "data.aselmdb", "oc20": "data.lmdb", "extxyz": "data.extxyz"}


def read_all(path: Path, fmt: str, order: np.ndarray) -> float:
    """Seconds to decode every record in ``order`` into Structures."""
    with open_dataset(path, fmt) as reader:
        reader[0]  # open handles outside the timed region
        start = time.perf_counter()
        atoms = 0
        for i in order:
            atoms += reader[int(i)].natoms
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("bench_out/data_work"))
    parser.add_argument("--out", type=Path, default=Path("bench_out/data.json"))
    parser.add_argument("--formats", default=",".join(FORMATS))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)

    start = time.perf_counter()
    frames = list(generate("slab-adsorbate", args.n, seed=0, size=(4, 4, 4), frames_per_system=10))
    gen_s = time.perf_counter() - start
    natoms = np.array([s.natoms for s in frames])
    print(f"generated {args.n} structures ({natoms.mean():.1f} atoms on average) with EMT in {gen_s:.1f} s")

    order = np.random.default_rng(0).permutation(args.n)
    results = []
    for fmt in args.formats.split(","):
        path = args.work / FORMATS[fmt]
        start = time.perf_counter()
        write_dataset(path, frames, fmt)
        write_s = time.perf_counter() - start
        read_s = read_all(path, fmt, order)
        size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")))
        results.append({"format": fmt, "write_s": write_s, "read_s": read_s, "read_per_s": args.n / read_s,
                        "bytes": size})
    native = next(r for r in results if r["format"] == "native")
    print(f"\n{'format':<10}{'write s':>10}{'read s':>10}{'structures/s':>15}{'MB':>10}{'native speed-up':>17}")
    for r in results:
        r["native_speedup"] = r["read_s"] / native["read_s"]
        print(f"{r['format']:<10}{r['write_s']:>10.2f}{r['read_s']:>10.2f}{r['read_per_s']:>15,.0f}"
              f"{r['bytes'] / 1e6:>10.1f}{r['native_speedup']:>16.1f}x")
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "n": args.n, "mean_atoms": float(natoms.mean()),
            "generate_s": gen_s, "access": "shuffled random access, one process", "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(meta, indent=2))
    print(f"\nwrote {args.out}")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
