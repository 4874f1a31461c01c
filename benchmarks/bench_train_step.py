"""Training-step time of the equivariant families on an acetylacetone-sized batch (CPU, float32).

Workload: the MACE comparison batch, 5 molecules of 15 atoms each with acetylacetone's composition
(C5H8O2), random positions with every pair at least 1 A apart inside a 4.5 A cube (so, like acac at a
5 A cutoff, most pairs are neighbours: about 1,000 directed edges per batch), no pbc. Model config
``{"family": F, "elements": [1, 6, 8], "cutoff": 5.0, "channels": 32, "lmax": L, "num_interactions": 2}``
with everything else at its default.

One training step = forward energy, forces by autograd with ``create_graph=True``, an energy + force MSE
loss against fixed random targets, backward (second derivatives through the message functions), and an
AdamW step built as the trainer builds it (fused, the recipe's default ``optim`` settings; the trainer's
gradient clipping and EMA update are not timed). Timing: median (and best) over ``--steps`` steps after
``--warmup`` steps, each step timed alone with ``time.perf_counter``, plus the median thread CPU time
(``time.thread_time``, user + system, so page faults count), which other jobs on a shared machine disturb
much less than wall time; threads fixed by ``--threads`` (default 1).

``--profile FAMILY:L`` runs ``torch.profiler`` over a few steps of one case and prints the top operators
by self CPU time.

Usage:
    python benchmarks/bench_train_step.py [--families tdn gaunt cg] [--lmax 1 2] [--steps 50]
        [--threads 1] [--interactions 2] [--json benchmarks/results/bench_train_step_threads1.json]
        [--profile tdn:1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlip_cli.models import build_model
from mlip_cli.train.recipe import OptimSection
from mlip_cli.train.trainer import build_optimizer
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import load_average, provenance, write_report  # noqa: E402  (benchmarks/report.py)

ACAC = [6] * 5 + [1] * 8 + [8] * 2  # C5H8O2
CUTOFF = 5.0


def random_molecule(rng: np.random.Generator, numbers=ACAC, side: float = 4.5, dmin: float = 1.0) -> Structure:
    """Atoms placed one by one uniformly in a cube, rejecting any closer than ``dmin`` to a placed one."""
    pos: list[np.ndarray] = []
    while len(pos) < len(numbers):
        p = rng.uniform(0.0, side, 3)
        if all(np.linalg.norm(p - q) >= dmin for q in pos):
            pos.append(p)
    return Structure(numbers=np.asarray(numbers), positions=np.asarray(pos) + 22.75)  # centred in a 50 A box


def make_batch(n_structures: int = 5, seed: int = 0, dtype=torch.float32):
    """The benchmark batch, with random energy and force targets."""
    rng = np.random.default_rng(seed)
    graphs = [structure_to_graph(random_molecule(rng), CUTOFF, dtype=dtype) for _ in range(n_structures)]
    batch = collate_graphs(graphs)
    gen = torch.Generator().manual_seed(seed)
    targets = {
        "energy": torch.randn(n_structures, generator=gen, dtype=dtype),
        "forces": torch.randn(batch.num_atoms, 3, generator=gen, dtype=dtype),
    }
    return batch, targets


INTERACTIONS = 2  # --interactions
CHANNELS = 32  # --channels


def config(family: str, lmax: int, backend: str = "auto") -> dict:
    return {
        "family": family,
        "elements": [1, 6, 8],
        "cutoff": CUTOFF,
        "channels": CHANNELS,
        "lmax": lmax,
        "num_interactions": INTERACTIONS,
        "message_backend": backend,
    }


def trainer_optimizer(model: torch.nn.Module) -> torch.optim.AdamW:
    """The trainer's optimizer (``build_optimizer``) with the default ``optim`` section of a recipe, on the CPU."""
    return build_optimizer(model.parameters(), OptimSection(), torch.device("cpu"))


def make_step(family: str, lmax: int, batch, targets, dtype=torch.float32, backend: str = "auto"):
    """Model, optimiser and a closure doing one full training step (returns the loss)."""
    torch.manual_seed(0)
    model = build_model(config(family, lmax, backend), dtype=dtype).train()
    opt = trainer_optimizer(model)

    def step() -> float:
        out = model(batch)  # training mode: forces with create_graph=True
        loss = (out["energy"] - targets["energy"]).square().mean() + (out["forces"] - targets["forces"]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return model, step


def time_steps(step, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU milliseconds of each step (CPU time is robust to other jobs on the machine)."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.thread_time()
        step()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return wall, cpu


def run_case(family: str, lmax: int, batch, targets, warmup: int, steps: int, backend: str = "auto") -> dict:
    model, step = make_step(family, lmax, batch, targets, backend=backend)
    wall, cpu = time_steps(step, warmup, steps)
    med = statistics.median(wall)
    return {
        "family": family,
        "lmax": lmax,
        "params": sum(p.numel() for p in model.parameters()),
        "ranks": [b.conv.rank for b in model.blocks],
        "backend": backend,
        "median_ms": med,
        "best_ms": min(wall),
        "cpu_median_ms": statistics.median(cpu),
        "structures_per_s": batch.num_graphs / (med / 1e3),
        "steps": steps,
    }


def profile_case(family: str, lmax: int, batch, targets, steps: int = 10, top: int = 25, backend: str = "auto") -> str:
    from torch.profiler import ProfilerActivity, profile

    _, step = make_step(family, lmax, batch, targets, backend=backend)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=["tdn", "gaunt", "cg"])
    ap.add_argument("--lmax", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="auto", help="message backend (model config message_backend)")
    ap.add_argument("--structures", type=int, default=5)
    ap.add_argument(
        "--interactions",
        type=int,
        default=2,
        help="num_interactions (3+: middle blocks use the "
        "full L x L -> L product; with 2 both blocks have a scalar end)",
    )
    ap.add_argument("--channels", type=int, default=32, help="channels (the medium recipes use 128)")
    ap.add_argument("--json", type=Path, help="write the rows and machine info here")
    ap.add_argument("--profile", metavar="FAMILY:L", help="profile one case instead of timing")
    args = ap.parse_args(argv)
    global INTERACTIONS, CHANNELS
    INTERACTIONS, CHANNELS = args.interactions, args.channels
    torch.set_num_threads(args.threads)
    batch, targets = make_batch(args.structures)
    print(
        f"batch: {batch.num_graphs} structures, {batch.num_atoms} atoms, {batch.num_edges} edges; "
        f"float32, {torch.get_num_threads()} thread(s), {args.interactions} interactions"
    )
    if args.profile:
        fam, L = args.profile.split(":")
        print(profile_case(fam, int(L), batch, targets, backend=args.backend))
        return
    rows, load_before = [], load_average()
    print(
        f"{'family':>6} {'L':>2} {'ranks':>9} {'params':>7} {'median ms':>10} {'best ms':>8} {'cpu ms':>7} "
        f"{'structs/s':>10}"
    )
    for L in args.lmax:
        for fam in args.families:
            r = run_case(fam, L, batch, targets, args.warmup, args.steps, args.backend)
            rows.append(r)
            ranks = "/".join("-" if k is None else str(k) for k in r["ranks"])
            print(
                f"{fam:>6} {L:>2} {ranks:>9} {r['params']:>7} {r['median_ms']:>10.2f} "
                f"{r['best_ms']:>8.2f} {r['cpu_median_ms']:>7.2f} {r['structures_per_s']:>10.1f}",
                flush=True,
            )
    if args.json:
        doc = {
            "benchmark": "training step (forward, forces with create_graph, loss, backward, AdamW)",
            "provenance": provenance(
                threads=torch.get_num_threads(),
                dtype="float32",
                load_before=load_before,
                sizes={"structures": batch.num_graphs, "atoms": batch.num_atoms, "edges": batch.num_edges},
            ),
            "config": {**config("", 0), "family": "per row", "lmax": "per row"},
            "optimizer": "torch.optim.AdamW(fused=True) with the recipe's default optim section, as the trainer",
            "timing": f"median and best wall time, median thread CPU time, of {args.steps} steps after "
            f"{args.warmup} warm-up steps",
            "rows": rows,
        }
        write_report(args.json, doc)


if __name__ == "__main__":
    main()
