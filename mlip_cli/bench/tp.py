"""``mlip bench tp``: tensor-product convolutions vs the e3nn peer, one row per (L, method).

Every method does the same job (:mod:`mlip_cli.bench.convs`): messages ``w_e * tp(x[src_e], Y(r_e))`` summed
per receiver, with gradients w.r.t. node features, edge harmonics and weights. Speed-ups are ratios to
e3nn timed in the same run, on the same inputs.
"""

from __future__ import annotations

import math
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from . import TP_METHODS, convs, measure, peers

__all__ = ["TPBenchConfig", "run_tp_bench", "caption"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
REFERENCE_NAMES = {
    "all": "cg, all paths",
    "even": "cg, even paths (l1+l2+l3 even), path weight 1",
    "gaunt": "cg, even paths weighted by the Gaunt factors G_p / CG_p",
}


@dataclass
class TPBenchConfig:
    """Options of :func:`run_tp_bench` (the CLI's options one to one)."""

    l_min: int = 1
    l_max: int = 6
    channels: int = 64
    edges: int = 4096
    nodes: int = 512
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    backend: str = "auto"
    methods: tuple[str, ...] = TP_METHODS
    repeats: int = 3
    min_time: float = 0.3
    quick: bool = False
    check_edges: int = 256
    check_nodes: int = 64
    rotations: int = 3
    cp_extra: float = 0.25
    seed: int = 0
    e3nn: bool = True

    @property
    def n_rotations(self) -> int:
        return min(self.rotations, 2) if self.quick else self.rotations

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not 1 <= self.l_min <= self.l_max:
            raise ValueError(f"need 1 <= --l-min <= --l-max, got {self.l_min} and {self.l_max}")
        if self.l_max > 8:
            raise ValueError(f"--l-max {self.l_max}: at most 8 (the CG tables and e3nn peer grow as L^6)")
        for name in ("channels", "edges", "nodes", "repeats", "check_edges", "check_nodes", "rotations"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: choose from {', '.join(DTYPES)}")
        bad = [m for m in self.methods if m not in TP_METHODS]
        if bad or not self.methods:
            raise ValueError(f"--methods {','.join(bad) or '(none)'}: choose from {', '.join(TP_METHODS)}")
        from mlip_kernels.message import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r}: choose from {', '.join(BACKENDS)}")
        if self.cp_extra <= 0:
            raise ValueError(f"--cp-extra must be > 0, got {self.cp_extra}")
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}: choose cpu or cuda[:i]")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(
                    f"--device {self.device}: CUDA is not available (torch {torch.__version__}, "
                    f"built with CUDA {torch.version.cuda or 'none'})"
                )
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ValueError(f"--device {self.device}: only {torch.cuda.device_count()} CUDA device(s)")


def _build(name: str, L: int, cfg: TPBenchConfig, dtype, device):
    """The conv for a method, or a string saying why it is skipped."""
    from mlip_kernels.cp import DEFAULT_RANKS, CPFitWarning
    from mlip_kernels.tp import make_tp

    if name == "e3nn":
        if not cfg.e3nn or peers.e3nn_version() is None:
            return "e3nn is not installed (pip install 'e3nn>=0.5')" if cfg.e3nn else "disabled (--no-e3nn)"
        return convs.E3nnConv(L, cfg.channels, dtype, device)
    if name == "cg":
        return convs.DenseCGConv(L, dtype, device)
    variant = name.removeprefix("rank-")
    base = variant.split("-")[0]  # "gaunt" or "cp"
    if base == "cp":
        if L not in DEFAULT_RANKS:
            return f"no default CP rank for L={L} (defaults: L in {sorted(DEFAULT_RANKS)})"
        rank = DEFAULT_RANKS[L]
        if variant == "cp-high":  # the shipped exact factors with components split (same tensor, still exact)
            rank += max(1, math.ceil(cfg.cp_extra * rank))
        with warnings.catch_warnings():
            # factors that are not shipped would be fitted now (minutes): skip the row instead of waiting
            warnings.simplefilter("error", CPFitWarning)
            try:
                tp = make_tp("cp", L, rank=rank, dtype=dtype, device=device)
            except CPFitWarning:
                return (
                    f"CP factors for L={L}, rank {DEFAULT_RANKS[L]} are not shipped "
                    "(fit them with python -m mlip_kernels.fit_cp)"
                )
    else:
        tp = make_tp(base, L, dtype=dtype, device=device)
    reference = "gaunt" if base == "gaunt" else "all"
    if name.startswith("rank-"):
        return convs.RankSpaceConv(tp, reference, cfg.backend, cfg.channels)
    return convs.PerEdgeConv(tp, reference)


def _graph(n_nodes: int, n_edges: int, gen, device) -> convs.Graph:
    src = torch.randint(0, n_nodes, (n_edges,), generator=gen)
    dst = torch.randint(0, n_nodes, (n_edges,), generator=gen)
    order = torch.argsort(dst, stable=True)  # receiver-sorted, as a batch's neighbour list usually is
    return convs.Graph(src[order].to(device), dst[order].to(device), n_nodes)


def _inputs(L: int, C: int, g: convs.Graph, dtype, device, gen):
    from mlip_kernels.sh import spherical_harmonics

    d, E = (L + 1) ** 2, g.src.shape[0]
    x = torch.randn(g.n, C, d, generator=gen, dtype=torch.float64)
    vec = torch.randn(E, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(E, C, generator=gen, dtype=torch.float64)
    G = torch.randn(g.n, C, d, generator=gen, dtype=torch.float64)
    x, vec, w, G = (t.to(dtype=dtype, device=device) for t in (x, vec, w, G))
    return x, vec, spherical_harmonics(vec, L), w, G


def _time_row(conv, g, x, Y, w, G, cfg: TPBenchConfig, device) -> dict:
    inputs = [t.detach().clone().requires_grad_() for t in conv.native_inputs(x, Y, w)]
    Gn = conv.from_ours(G)

    def fwd_bwd():
        out = conv(g, *inputs)
        torch.autograd.grad((out * Gn).sum(), inputs)

    def fwd():
        with torch.no_grad():
            conv(g, *inputs)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    reps = dict(repeats=1, min_time=0.0) if cfg.quick else dict(repeats=cfg.repeats, min_time=cfg.min_time)
    row = {}
    try:  # the first (warm-up) call doubles as the memory measurement
        row["peak_mem_mb"] = round(measure.peak_memory_mb(fwd_bwd, device), 2)
    except Exception as exc:  # e.g. torch.compile under a dispatch mode: report, then warm up plainly
        row["peak_mem_mb"], row["peak_mem_error"] = None, f"{type(exc).__name__}: {exc}"[:200]
        fwd_bwd()
    best, median, n = peers.best_of(fwd_bwd, warmup=0, sync=sync, **reps)
    row.update(fwd_bwd_ms=round(best, 3), fwd_bwd_ms_median=round(median, 3), fwd_bwd_repeats=n)
    best, median, n = peers.best_of(fwd, warmup=0 if cfg.quick else 1, sync=sync, **reps)
    row.update(fwd_ms=round(best, 3), fwd_ms_median=round(median, 3), fwd_repeats=n)
    return row


def _error_row(conv, g, x, vec, w, L: int, refs: dict, cfg, gen) -> dict:
    from mlip_kernels.sh import spherical_harmonics

    with torch.no_grad():
        f = conv.ours(g)
        out = f(x, spherical_harmonics(vec, L), w)
        ref = refs[conv.reference]
        return {
            "equiv_err": measure.equivariance_error(f, x, vec, w, L, cfg.n_rotations, gen),
            "rel_err_vs_cg": measure.relative_error(out, ref),
            "rel_err_reference": REFERENCE_NAMES[conv.reference],
            "rel_err_path_set": conv.reference,
        }


def _describe(name: str, conv, L: int) -> dict:
    paths = conv.paths
    odd = any((a + b + c) % 2 for a, b, c in paths)
    tp = getattr(conv, "tp", None)
    return {
        "L": L,
        "method": name,
        "impl": conv.impl,
        "rank": conv.rank,
        "n_paths": len(paths),
        "parity_odd_paths": odd,
        "cross_product_path": (1, 1, 1) in paths,
        "paths": [list(p) for p in paths],
        # relative Frobenius error of the CP factors against the CG tensor they decompose
        "cp_fit_rel_error": tp.rel_error if getattr(tp, "kind", None) == "cp" else None,
        "message_backend": getattr(conv, "backend", None),
    }


def run_tp_bench(cfg: TPBenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark; returns ``{"meta": ..., "rows": [...]}`` (JSON-ready).

    Raises:
        ValueError: for bad options (see :meth:`TPBenchConfig.validate`).
    """
    cfg.validate()
    progress = progress or (lambda msg: None)
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        meta = _meta(cfg)
        rows = []
        for L in range(cfg.l_min, cfg.l_max + 1):
            rows += _run_L(L, cfg, dtype, device, progress)
        meta["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        meta["summary"] = _summary(rows)
        return {"meta": meta, "rows": rows}
    finally:
        torch.set_num_threads(threads_before)


def _run_L(L: int, cfg: TPBenchConfig, dtype, device, progress) -> list[dict]:
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + L)
    g = _graph(cfg.nodes, cfg.edges, gen, device)
    x, _, Y, w, G = _inputs(L, cfg.channels, g, dtype, device, gen)
    gc = _graph(min(cfg.nodes, cfg.check_nodes), min(cfg.edges, cfg.check_edges), gen, device)
    xc, vc, Yc, wc, _ = _inputs(L, cfg.channels, gc, torch.float64, device, gen)
    refs = {k: measure.reference_conv(xc, Yc, wc, gc.src, gc.dst, gc.n, L, k) for k in REFERENCE_NAMES}
    rows = []
    for name in [m for m in TP_METHODS if m in cfg.methods]:
        progress(f"L={L} {name}")
        row = {"L": L, "method": name, "status": "ok"}
        try:
            conv = _build(name, L, cfg, dtype, device)
            if isinstance(conv, str):
                rows.append({**row, "status": "skipped", "note": conv})
                continue
            row.update(_describe(name, conv, L))
            row.update(_time_row(conv, g, x, Y, w, G, cfg, device))
            check = conv if dtype == torch.float64 else _build(name, L, cfg, torch.float64, device)
            row.update(_error_row(check, gc, xc, vc, wc, L, refs, cfg, gen))
        except (RuntimeError, MemoryError) as exc:  # out of memory, a kernel that cannot run here, ...
            row.update(status="failed", note=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            if device.type == "cuda":  # hand a failed or finished row's cached blocks back before the next
                torch.cuda.empty_cache()
        rows.append(row)
    base = next((r for r in rows if r["method"] == "e3nn" and r["status"] == "ok"), None)
    for r in rows:
        if base and r["status"] == "ok":
            r["speedup_vs_e3nn"] = round(base["fwd_bwd_ms"] / r["fwd_bwd_ms"], 2)
            r["fwd_speedup_vs_e3nn"] = round(base["fwd_ms"] / r["fwd_ms"], 2)
        else:
            r.setdefault("speedup_vs_e3nn", None)
    return rows


def _summary(rows: list[dict]) -> dict:
    """Speed-ups over e3nn (forward+backward) per method and L, and whether they grow with L."""
    out = {}
    for name in TP_METHODS[1:]:
        s = {r["L"]: r["speedup_vs_e3nn"] for r in rows if r["method"] == name and r.get("speedup_vs_e3nn")}
        if s:
            vals = [s[k] for k in sorted(s)]
            out[name] = {"speedup_vs_e3nn_by_L": s, "grows_with_L": all(b > a for a, b in zip(vals, vals[1:]))}
    return out


def _meta(cfg: TPBenchConfig) -> dict:
    import mlip_kernels

    from .._version import __version__

    device = torch.device(cfg.device)
    e3nn = peers.e3nn_version() if cfg.e3nn else None
    meta = {
        "benchmark": "mlip bench tp: per-edge tensor-product convolutions and the rank-space message path "
        "vs the e3nn channel-wise (uvu) convolution",
        "job": "out[n] = sum_{e: dst_e=n} w_e * tp(x[src_e], Y(r_e)); x [N,C,(L+1)^2], Y [E,(L+1)^2], "
        "w [E,C]; forward+backward = grads of sum(out * G) w.r.t. x, Y, w",
        "machine": peers.machine_info(cfg.device),
        "code": peers.code_version(),
        "versions": {
            "mlip": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "e3nn": e3nn,
            "mlip_kernels": getattr(mlip_kernels, "__version__", None),
        },
        "config": asdict(cfg) | {"methods": list(cfg.methods)},
        "sizes": {"nodes": cfg.nodes, "edges": cfg.edges, "channels": cfg.channels},
        "dtype": cfg.dtype,
        "peers": {"e3nn": e3nn},
        "timing_method": (
            "wall clock, best of 1 call after 1 warm-up (--quick)"
            if cfg.quick
            else f"wall clock, best of >= {cfg.repeats} calls (more while under {cfg.min_time} s) after 1 warm-up; "
            "medians alongside"
        ),
        "speedup": "e3nn forward+backward time / row forward+backward time, same run, same inputs",
        "peak_mem_method": measure.PEAK_MEM_METHOD[device.type],
        "error_method": (
            f"float64 on a sub-graph ({min(cfg.edges, cfg.check_edges)} edges over "
            f"{min(cfg.nodes, cfg.check_nodes)} nodes), independent of the timed dtype. equiv_err: largest "
            f"||f(Dx, Y(Rr), w) - D f(x, Y(r), w)|| / ||f(x, Y(r), w)|| over {cfg.n_rotations} random "
            "rotations R (D: Wigner blocks). rel_err_vs_cg: against mlip_kernels.cg.cg_tensor_product on "
            "the path set in rel_err_reference"
        ),
        "notes": [
            "e3nn has one weight per edge, path and channel (the channel weights repeated over paths, "
            "so it computes the even-path CG); ours share one weight per edge and channel over all paths.",
            "e3nn's inputs and output have the natural parity (-1)^l, so it has only paths with l1+l2+l3 "
            "even (no cross product); cg and cp have all paths, gaunt only the even ones.",
            "cp-high: the shipped CP factors with components split to a higher rank (same tensor, same "
            f"error; +{cfg.cp_extra:.0%} rank); its time is what a fitted factorisation of that rank costs.",
        ],
    }
    load = meta["machine"]["load_average"]
    if load and load[0] > 0.5 * (os.cpu_count() or 1):
        meta["notes"].append(
            f"the machine was loaded (load average {load[0]}) while measuring: timings are "
            "best-of to reduce, not remove, the disturbance"
        )
    meta["caption"] = caption(meta)
    return meta


def caption(meta: dict) -> str:
    """One line saying what machine, threads, dtype, sizes and peers a figure was measured with."""
    m, s = meta["machine"], meta["sizes"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores)"
    peer = f"e3nn {meta['peers']['e3nn']}" if meta["peers"]["e3nn"] else "no e3nn peer"
    n = m["torch_threads"]
    return (
        f"{where}, {n} thread{'s' if n != 1 else ''}, {meta['dtype']}, {s['channels']} channels, "
        f"{s['edges']} edges over {s['nodes']} nodes, peer: {peer}, load avg {m['load_average'][0]}"
    )
