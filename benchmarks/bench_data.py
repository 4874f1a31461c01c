"""Read throughput of the native store vs aselmdb vs legacy OC20 LMDB, and conversion times.

Generates OC20-like slab+adsorbate frames (4x4x4 slabs plus an adsorbate: about 66 atoms) with EMT once,
writes them in each format, then reads every record in a shuffled order (as a training epoch does). Also
times building the neighbour graph of a decoded frame (``structure_to_graph`` at ``--graph-cutoff``), the
other half of a data loader's work.

    python benchmarks/bench_data.py --n 10000 --out bench_out/data.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from mlip_datasets.generate import generate
from mlip_datasets.graph import structure_to_graph
from mlip_datasets.io import open_dataset, write_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

FORMATS = {"native": "store", "aselmdb": "data.aselmdb", "oc20": "data.lmdb", "extxyz": "data.extxyz"}


def read_all(path: Path, fmt: str, order: np.ndarray) -> tuple[float, float]:
    """Seconds to decode every record in ``order`` into Structures: first pass (including opening the data set,
    which is where extxyz parses the whole file, and first touches of mapped pages) and a second, warm pass."""
    times = []
    start = time.perf_counter()
    with open_dataset(path, fmt) as reader:
        for _ in range(2):
            for i in order:
                reader[int(i)]
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
    return times[0], times[1]


def graph_build_us(frames, cutoff: float, n: int = 1000) -> float:
    """Mean microseconds to build the float32 neighbour graph of one decoded frame (first ``n`` frames)."""
    import torch

    torch.set_num_threads(1)
    sample = frames[:n]
    start = time.perf_counter()
    for s in sample:
        structure_to_graph(s, cutoff, dtype=torch.float32)
    return (time.perf_counter() - start) / len(sample) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("bench_out/data_work"))
    parser.add_argument("--out", type=Path, default=Path("bench_out/data.json"))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--graph-cutoff", type=float, default=5.0, help="cutoff (A) of the graph-building timing")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)

    load_before, start = load_average(), time.perf_counter()
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
        first_s, warm_s = read_all(path, fmt, order)
        size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")))
        results.append(
            {
                "format": fmt,
                "write_s": write_s,
                "first_pass_s": first_s,
                "warm_pass_s": warm_s,
                "first_pass_per_s": args.n / first_s,
                "warm_pass_per_s": args.n / warm_s,
                "bytes": size,
            }
        )
    native = next(r for r in results if r["format"] == "native")
    print(
        f"\n{'format':<10}{'write s':>9}{'1st pass/s':>12}{'warm/s':>10}{'MB':>8}"
        f"{'native x (1st)':>16}{'native x (warm)':>17}"
    )
    for r in results:
        r["native_speedup_first"] = r["first_pass_s"] / native["first_pass_s"]
        r["native_speedup_warm"] = r["warm_pass_s"] / native["warm_pass_s"]
        print(
            f"{r['format']:<10}{r['write_s']:>9.2f}{r['first_pass_per_s']:>12,.0f}{r['warm_pass_per_s']:>10,.0f}"
            f"{r['bytes'] / 1e6:>8.1f}{r['native_speedup_first']:>15.1f}x{r['native_speedup_warm']:>16.1f}x"
        )
    graph_us = graph_build_us(frames, args.graph_cutoff)
    decode_us = native["warm_pass_s"] / args.n * 1e6
    print(f"graph building at {args.graph_cutoff} A: {graph_us:.0f} us per frame; native decode: {decode_us:.0f} us")
    meta = {
        "provenance": provenance(
            threads=1,
            dtype="float64 records; float32 graphs",
            load_before=load_before,
            sizes={"structures": args.n, "mean_atoms": float(natoms.mean())},
        ),
        "n": args.n,
        "mean_atoms": float(natoms.mean()),
        "generate_s": gen_s,
        "access": "shuffled random access, one process, two passes",
        "results": results,
        "graph_build": {
            "cutoff": args.graph_cutoff,
            "frames": min(1000, args.n),
            "us_per_frame": graph_us,
            "native_decode_us_per_frame": decode_us,
        },
    }
    write_report(args.out, meta)
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
