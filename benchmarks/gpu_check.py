"""On a CUDA GPU: the Triton message kernels against the torch kernels, for correctness and speed.

    python benchmarks/gpu_check.py --out bench_out/gpu_check.json

Three parts, each comparing backends measured in the same process on the same inputs:

* ``kernels``: :func:`mlip_kernels.message.rank_message` with ``backend="triton"`` against ``"torch"`` on a
  random receiver-sorted graph (2,000 nodes, 60,000 edges): the message, its first derivatives in ``P``, ``u``,
  ``w`` and a second derivative (what force training differentiates), as relative errors, in float32 and
  float64 at (C, R) = (32, 6), (128, 26), (128, 50); and what ``backend="auto"`` resolves to.
* ``message``: forward+backward time of the message alone at 10,000 nodes, 300,000 edges, C = 128, R = 26 and 50,
  float32 (median of repeats after warm-up, CUDA synchronised), torch / triton / naive.
* ``model``: the medium recipes' models (``recipes/3bpa/<family>-medium.yaml``: 128 channels, L = 2,
  3 interactions) with ``message_backend`` torch and triton: one training step (forward, forces with
  ``create_graph``, loss, backward, AdamW) on batches of 5 and 64 random 15-atom molecules, and one
  energy+forces call of 10,000-atom fcc Cu (the model alone on a prebuilt graph) with its peak GPU memory.
* ``calc``: ASE calculator calls/s and velocity-Verlet MD steps/s on the GPU (a 15-atom molecule, 64-, 1,000- and
  10,000-atom fcc Cu) of the tdn and gaunt medium models against MACE at the same size (128x0e+128x1o+128x2e,
  max_ell 3, correlation 3, 2 interactions) through its own calculator (``mace_calculator.py``); float32, the
  neighbour lists on the CPU as each calculator builds them.

Untrained weights: time and agreement do not depend on training. Writes JSON with the GPU's name and versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "medium")]
from bench_speed import medium_config, medium_model  # noqa: E402
from bench_train_step import make_batch, trainer_optimizer  # noqa: E402
from report import provenance  # noqa: E402  (benchmarks/report.py)

from mlip_cli.models import build_model  # noqa: E402
from mlip_datasets.graph import collate_graphs, structure_to_graph  # noqa: E402
from mlip_datasets.record import Structure  # noqa: E402
from mlip_kernels import message as msg  # noqa: E402
from mlip_kernels.scatter import MessageGraph  # noqa: E402

DEV = torch.device("cuda")
SMOKE = False  # --smoke: tiny sizes, to try the script on the CPU with TRITON_INTERPRET=1


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def cuda_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in ms, synchronised before and after each call."""
    if SMOKE:
        repeats, warmup = 1, 0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def problem(n: int, e: int, C: int, R: int, dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (e,), generator=gen)
    dst = torch.sort(torch.randint(0, n, (e,), generator=gen)).values
    P, u, w = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((n, C, R), (e, R), (e, C)))
    G = torch.randn(n, C, R, generator=gen, dtype=torch.float64)
    to = dict(device=DEV, dtype=dtype)
    return MessageGraph(src.to(DEV), dst.to(DEV), n, n), P.to(**to), u.to(**to), w.to(**to), G.to(**to)


def derivatives(backend: str, graph, P, u, w, G):
    """Message, first derivatives in P, u, w, and d/du of <dL/dP, V> (a second derivative)."""
    P, u, w = (t.detach().clone().requires_grad_() for t in (P, u, w))
    out = msg.rank_message(P, u, w, None, None, graph.n_dst, backend, graph=graph)
    gP, gu, gw = torch.autograd.grad((out * G).sum(), (P, u, w), create_graph=True)
    (second,) = torch.autograd.grad((gP * G.flip(0)).sum(), (u,))
    return [t.detach().double() for t in (out, gP, gu, gw, second)]


def kernel_rows() -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.float64):
        for C, R in ((32, 6), (128, 26), (128, 50)):
            args = problem(20, 60, C, R, dtype) if SMOKE else problem(2000, 60000, C, R, dtype)
            ref, got = derivatives("torch", *args), derivatives("triton", *args)
            errs = {
                name: float((g - r).norm() / r.norm())
                for name, g, r in zip(("out", "grad_P", "grad_u", "grad_w", "second_u"), got, ref)
            }
            auto = msg.resolve_backend("auto", args[1])
            rows.append({"dtype": str(dtype)[6:], "C": C, "R": R, "rel_err": errs, "auto": auto})
            print(f"kernels {rows[-1]}", flush=True)
    return rows


def message_rows() -> list[dict]:
    rows = []
    for R in (26, 50):
        n, e = (50, 1500) if SMOKE else (10000, 300000)
        graph, P, u, w, G = problem(n, e, 128, R, torch.float32)
        row = {"nodes": n, "edges": e, "C": 128, "R": R, "dtype": "float32"}
        for backend in ("torch", "triton", "naive"):
            Pg, ug, wg = (t.detach().clone().requires_grad_() for t in (P, u, w))

            def step():
                out = msg.rank_message(Pg, ug, wg, None, None, graph.n_dst, backend, graph=graph)
                torch.autograd.grad((out * G).sum(), (Pg, ug, wg))

            row[f"{backend}_ms"] = cuda_ms(step)
        row["triton_speedup"] = row["torch_ms"] / row["triton_ms"]
        rows.append(row)
        print(f"message {row}", flush=True)
    return rows


def cu_graph(n_cells: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((n_cells, n_cells, n_cells))
    atoms.rattle(0.05, seed=0)
    return collate_graphs([structure_to_graph(Structure.from_atoms(atoms), 5.0, dtype=torch.float32)])


def medium_on_device(family: str, elements, backend: str):
    torch.manual_seed(0)
    return build_model(medium_config(family, elements, message_backend=backend), dtype=torch.float32).to(DEV)


def model_rows(families) -> list[dict]:
    rows = []
    batches = {n: make_batch(n_structures=n) for n in ((1,) if SMOKE else (5, 64))}
    cu = cu_graph(2 if SMOKE else 14)  # 14^3 x 4 = 10,976 atoms
    for family in families:
        for backend in ("torch", "triton"):
            row = {"family": family, "backend": backend}
            for n, (batch, targets) in batches.items():
                model = medium_on_device(family, [1, 6, 8], backend).train()
                opt = trainer_optimizer(model)
                b, t = batch.to(DEV), {k: v.to(DEV) for k, v in targets.items()}

                def step():
                    out = model(b)
                    loss = (out["energy"] - t["energy"]).square().mean() + (out["forces"] - t["forces"]).square().mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                row[f"train_step_ms_batch{n}"] = cuda_ms(step, repeats=20)
            model = medium_on_device(family, [29], backend).eval()
            g = cu.to(DEV)
            if DEV.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            row["cu_atoms"] = int(g.num_atoms)
            row["cu_energy_forces_ms"] = cuda_ms(lambda: model(g), repeats=5, warmup=1)
            if DEV.type == "cuda":
                row["cu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            print(f"model {row}", flush=True)
    return rows


CALC_SYSTEMS = ("mol15", "cu64", "cu1000", "cu10000")


def calc_rows(families, mace_python: str, work: Path, min_time: float) -> list[dict]:
    """ASE calculator calls/s and MD steps/s on the GPU: the medium models against MACE at the same size.

    MACE (hidden irreps 128x0e+128x1o+128x2e, max_ell 3, correlation 3, 2 interactions, untrained, float32) runs
    through its own ``MACECalculator`` (``mace_calculator.py --device cuda``), the mlip models through
    :class:`~mlip_cli.calculator.MLIPCalculator`; both with the same systems and timing loops.
    """
    import subprocess

    from mace_calculator import SYSTEMS, time_calls, time_md

    from mlip_cli.calculator import MLIPCalculator

    min_time = 0.2 if SMOKE else min_time
    systems = CALC_SYSTEMS[:1] if SMOKE else CALC_SYSTEMS
    rows = []
    for family in families:
        calc = MLIPCalculator(medium_model(family), device=DEV.type)
        for system in systems:
            row = {"arm": family, "system": system}
            for key, timer in (("calls_per_s", time_calls), ("md_steps_per_s", time_md)):
                atoms = SYSTEMS[system]()
                atoms.calc = calc
                row[key] = timer(atoms, min_time)
            rows.append(row)
            print(f"calc {row}", flush=True)
    out = work / "mace_calc.json"
    size = ["--channels", "128", "--lmax", "2", "--max-ell", "3", "--interactions", "2"]
    cmd = [mace_python, str(HERE / "mace_calculator.py"), "--systems", ",".join(systems), "--dtypes", "float32"]
    cmd += [*size, "--device", DEV.type, "--min-time", str(min_time), "--json", str(out)]
    subprocess.run(cmd, check=True)
    for r in json.loads(out.read_text())["rows"]:
        rows.append(
            {
                "arm": "mace2",
                "system": r["system"],
                "calls_per_s": r["calls_per_s"],
                "md_steps_per_s": r["md_steps_per_s"],
            }
        )
        print(f"calc {rows[-1]}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="kernels,message,model,calc")
    ap.add_argument("--families", nargs="+", default=["tdn", "gaunt", "cg"])
    ap.add_argument("--calc-families", nargs="+", default=["tdn", "gaunt"])
    ap.add_argument("--min-time", type=float, default=5.0, help="seconds per calculator measurement (part calc)")
    ap.add_argument("--mace-python", default=sys.executable, help="a python with mace-torch (part calc)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (set TRITON_INTERPRET=1)")
    args = ap.parse_args()
    global DEV, SMOKE
    if args.smoke:
        DEV, SMOKE = torch.device("cpu"), True
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device")
    import triton

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "gpu": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (smoke)",
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda},
    }
    measure = {
        "kernels": kernel_rows,
        "message": message_rows,
        "model": lambda: model_rows(args.families),
        "calc": lambda: calc_rows(args.calc_families, args.mace_python, args.out.parent, args.min_time),
    }
    for part in args.parts.split(","):
        report[part] = measure[part]()
        args.out.write_text(json.dumps(report, indent=1))  # a failed later part keeps the earlier ones
    sizes = {"kernels": "2,000 nodes, 60,000 edges", "message": "10,000 nodes, 300,000 edges", "cu": "10,976 atoms"}
    report["provenance"] = provenance(threads=None, dtype="float32", sizes=sizes, device=DEV.type)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
