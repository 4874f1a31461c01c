"""Rank-space message passing vs an e3nn channel-wise convolution, forward+backward, on the CPU.

Workload (DESIGN.md section 3): float32, 64 channels, 4,096 random edges over 512 nodes, node features of
degree L (d = (L+1)^2), edge spherical harmonics of degree L, per-edge weights, and the loss
``sum(out * G)`` differentiated w.r.t. node features, edge harmonics and weights.

* peer ``e3nn``: ``e3nn.o3.TensorProduct`` over ``64x(0e+1o+...+L)`` x ``1x(0e+1o+...+L)`` ->
  ``64x(0e+1o+...+L)``, every parity-allowed ``uvu`` path, ``shared_weights=False`` (one weight per edge,
  path and channel), with the NequIP gather ``x[src]`` and ``index_add`` scatter.
* ours, end to end (:func:`mlip_kernels.message.rank_space_conv`): ``P = x @ A``, ``u = Y @ B``, the
  rank-space message, ``@ C``; one weight per edge and channel shared by all paths. Ranks R are the
  Gauss-Legendre Gaunt grid sizes exact to degree 3L (8, 28, 50, 91, 128, 190); the default path is also
  timed at the Lebedev sizes (6, 26, 38, 74, 86, 146). Factors are random (time does not depend on values).
  Message variants: ``materialised`` (gather, two multiplies, index_add; plain autograd), ``segment``
  (edges sorted by receiver, materialised message summed by ``torch.segment_reduce``), ``compile``
  (``torch.compile`` of the materialised function, forward and backward; it cannot double-backward:
  "torch.compile with aot_autograd does not currently support double backward"), ``chunked`` (the
  default ``"torch"`` backend: cache-sized edge chunks inside autograd Functions), ``inductor-ops`` (the
  opt-in ``"compile"`` backend: inductor-fused kernels inside the same Functions, double-backward safe).

Timings are best-of-repeats (least noisy on a shared machine); the JSON also has medians.

Usage: python benchmarks/bench_message.py [--L 1 2 3 4 5 6] [--threads N] [--no-compile] [--tune]
       [--out bench_out/bench_message.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from mlip_cli.bench.peers import best_of, e3nn_uvu_tp
from mlip_kernels import message as msg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import provenance, write_report  # noqa: E402  (benchmarks/report.py)

N_NODES, N_EDGES, CHANNELS = 512, 4096, 64
GL_RANK = {1: 8, 2: 28, 3: 50, 4: 91, 5: 128, 6: 190}  # mlip_kernels.grid: Gauss-Legendre, degree 3L
LEBEDEV_RANK = {1: 6, 2: 26, 3: 38, 4: 74, 5: 86, 6: 146}  # mlip_kernels.grid: Lebedev, degree 3L


def _time(fn, min_time: float = 1.0, max_repeats: int = 30) -> tuple[float, float, int]:
    """(best, median, repeats) wall time in ms, after one warm-up call (shared helper of ``mlip bench``)."""
    return best_of(fn, repeats=3, warmup=1, min_time=min_time, max_repeats=max_repeats)


def _graph(gen):
    src = torch.randint(0, N_NODES, (N_EDGES,), generator=gen)
    dst = torch.randint(0, N_NODES, (N_EDGES,), generator=gen)
    order = torch.argsort(dst, stable=True)  # receiver-sorted, as a batch's neighbour list usually is
    return src[order], dst[order]


def e3nn_case(L: int, gen):
    """Forward+backward closure of the e3nn uvu convolution at degree L, and its path count."""
    tp = e3nn_uvu_tp(L, CHANNELS)  # the peer shared with `mlip bench tp` (mlip_cli.bench.peers)
    feat, sh, instr = tp.irreps_in1, tp.irreps_in2, tp.instructions
    x = torch.randn(N_NODES, feat.dim, generator=gen).requires_grad_()
    y = torch.randn(N_EDGES, sh.dim, generator=gen).requires_grad_()
    w = torch.randn(N_EDGES, tp.weight_numel, generator=gen).requires_grad_()
    G = torch.randn(N_NODES, feat.dim, generator=gen)
    src, dst = _graph(gen)

    def fwd():
        m = tp(x.index_select(0, src), y, w)
        return torch.zeros(N_NODES, feat.dim).index_add(0, dst, m)

    def fwd_bwd():
        torch.autograd.grad((fwd() * G).sum(), (x, y, w))

    return fwd, fwd_bwd, len(instr)


def _segment_message(P, u, w, src, dst, n_out, lengths):
    m = P.index_select(0, src) * u[:, None, :] * w[:, :, None]
    return torch.segment_reduce(m, "sum", lengths=lengths, axis=0, unsafe=True)


def ours_case(L: int, R: int, variant: str, gen, compiled=None):
    """Forward+backward closure of rank_space_conv (project, message variant, back-project)."""
    d = (L + 1) ** 2
    x = torch.randn(N_NODES, CHANNELS, d, generator=gen).requires_grad_()
    Y = torch.randn(N_EDGES, d, generator=gen).requires_grad_()
    w = torch.randn(N_EDGES, CHANNELS, generator=gen).requires_grad_()
    A, B, C = (torch.randn(d, R, generator=gen), torch.randn(d, R, generator=gen), torch.randn(R, d, generator=gen))
    G = torch.randn(N_NODES, CHANNELS, d, generator=gen)
    src, dst = _graph(gen)
    lengths = torch.bincount(dst, minlength=N_NODES)
    graph = msg.MessageGraph(src, dst, N_NODES, N_NODES)

    def message(P, u):
        if variant == "chunked":
            return msg.rank_message(P, u, w, src, dst, N_NODES, "torch", graph=graph)
        if variant == "inductor-ops":
            return msg.rank_message(P, u, w, src, dst, N_NODES, "compile", graph=graph)
        if variant == "materialised":
            return msg.rank_message(P, u, w, src, dst, N_NODES, "naive", graph=graph)
        if variant == "segment":
            return _segment_message(P, u, w, src, dst, N_NODES, lengths)
        if variant == "compile":
            return compiled(P, u, w, src, dst, N_NODES)
        raise ValueError(variant)

    def fwd():
        return message(x @ A, Y @ B) @ C

    def fwd_bwd():
        torch.autograd.grad((fwd() * G).sum(), (x, Y, w))

    return fwd, fwd_bwd


def _naive_message(P, u, w, src, dst, n_out: int):
    m = P.index_select(0, src) * u[:, None, :] * w[:, :, None]
    return P.new_zeros(n_out, P.shape[1], P.shape[2]).index_add(0, dst, m)


def tune_chunks(gen, budgets_mib=(0.5, 1, 2, 4, 8)) -> list[dict]:
    """Message-only forward+backward of the chunked backend for several chunk byte budgets."""
    rows = []
    for R in GL_RANK.values():
        P = torch.randn(N_NODES, CHANNELS, R, generator=gen).requires_grad_()
        u = torch.randn(N_EDGES, R, generator=gen).requires_grad_()
        w = torch.randn(N_EDGES, CHANNELS, generator=gen).requires_grad_()
        src, dst = _graph(gen)
        row = {"R": R}
        for mib in budgets_mib:
            chunk = max(16, int(mib * 2**20 / (CHANNELS * R * 4)))

            def fb(chunk=chunk):
                out = msg.rank_message(P, u, w, src, dst, N_NODES, "torch", chunk_size=chunk)
                torch.autograd.grad(out.sum(), (P, u, w))

            row[f"{mib}MiB"] = round(_time(fb, min_time=0.5)[0], 2)
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--tune", action="store_true", help="also time chunk byte budgets of the chunked path")
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench_message.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    variants = ["materialised", "segment", "chunked"] + ([] if args.no_compile else ["compile", "inductor-ops"])
    compiled = None
    if not args.no_compile:
        compiled = torch.compile(_naive_message, dynamic=False)

    meta = {
        "benchmark": "rank-space message vs e3nn uvu convolution, forward+backward",
        "provenance": provenance(
            threads=torch.get_num_threads(),
            dtype="float32",
            sizes={"nodes": N_NODES, "edges": N_EDGES, "channels": CHANNELS},
        ),
        "timing": "best of >= 3 repeats and >= 1 s after one warm-up; medians alongside",
        "rows": [],
    }
    try:
        import e3nn

        meta["provenance"]["versions"]["e3nn"] = e3nn.__version__
    except ImportError:
        raise SystemExit("this benchmark needs e3nn as its peer: pip install 'e3nn>=0.5'") from None

    head = f"{'L':>2} {'R':>4} {'paths':>5} {'e3nn':>9} " + " ".join(f"{v:>12}" for v in variants)
    head += f" {'chunked@Leb':>11} | {'x chunked':>9} {'x @Leb':>7} {'x ind-ops':>9} | {'fwd e3nn':>9} {'fwd chunk':>9}"
    load = os.getloadavg()[0]
    if torch.get_num_threads() > 1 and load > 0.5:
        # Measured on the shared reference host: with another job on one core, every OpenMP barrier waits
        # for a descheduled thread and 2-thread timings became 5-50x slower and erratic (even a GEMM).
        print(
            f"note: load average {load:.1f} on {os.cpu_count()} cores; multi-threaded timings will be noisy "
            "(compare with --threads 1)"
        )
    print(f"threads={torch.get_num_threads()}  ms, best of repeats, forward+backward unless 'fwd'; x = e3nn / ours")
    print(head)
    for L in args.L:
        R, R_leb = GL_RANK[L], LEBEDEV_RANK[L]
        e_fwd, e_fb, n_paths = e3nn_case(L, gen)
        t_e3nn = _time(e_fb)
        with torch.no_grad():
            t_e3nn_fwd = _time(e_fwd)
        row = {"L": L, "R": R, "R_lebedev": R_leb, "e3nn_paths": n_paths, "e3nn": t_e3nn, "e3nn_fwd": t_e3nn_fwd}
        for v in variants:
            try:
                _, fb = ours_case(L, R, v, gen, compiled)
                row[v] = _time(fb)
            except Exception as exc:  # a variant that fails (e.g. no compiler for inductor) is reported, not fatal
                row[v] = None
                row[f"{v}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        row["chunked_lebedev"] = _time(ours_case(L, R_leb, "chunked", gen)[1])
        o_fwd, _ = ours_case(L, R, "chunked", gen)
        with torch.no_grad():
            row["chunked_fwd"] = _time(o_fwd)
        ratio = {
            k: (t_e3nn[0] / row[k][0] if row.get(k) else float("nan"))
            for k in ("chunked", "chunked_lebedev", "inductor-ops")
        }
        row["speedup"] = {k: round(v, 2) for k, v in ratio.items()}
        meta["rows"].append(row)
        cells = " ".join(f"{row[v][0]:12.2f}" if row[v] else f"{'failed':>12}" for v in variants)
        print(
            f"{L:>2} {R:>4} {n_paths:>5} {t_e3nn[0]:9.2f} {cells} {row['chunked_lebedev'][0]:11.2f} | "
            f"{ratio['chunked']:8.1f}x {ratio['chunked_lebedev']:6.1f}x {ratio['inductor-ops']:8.1f}x | "
            f"{t_e3nn_fwd[0]:9.2f} {row['chunked_fwd'][0]:9.2f}",
            flush=True,
        )
    if args.tune:
        print("\nchunk budget tuning, message only, forward+backward, ms:")
        meta["chunk_tuning"] = tune_chunks(gen)
    write_report(args.out, meta)


if __name__ == "__main__":
    main()
