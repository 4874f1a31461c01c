"""Rank-space message passing: ``out[n,c,r] = sum_{e: dst_e = n} P[src_e,c,r] * u[e,r] * w[e,c]``.

This is the fast path of DESIGN.md section 3: node features are projected into rank space once per node
(``P = x @ A``), the edge factor ``u = Y(r_e) @ B`` and the radial weights ``w`` are cheap, and the back
projection ``@ C`` happens once per node after the scatter, so an edge costs O(C R) instead of O(d R C).

Backends (all give the same numbers up to float rounding; saved models never depend on the choice):

* ``"torch"``: the default on the CPU. The same gather-multiply-scatter as ``"naive"`` but over chunks of
  edges small enough (about 4 MiB of message) to stay in cache, inside autograd Functions that never
  keep the ``E x C x R`` message alive. Measured 10-25x faster than ``"naive"`` at R = 50..190, where the
  materialised message (50-200 MB) is paid in page faults and DRAM traffic (benchmarks/bench_message.py),
  and 1.7-2.3x faster for a force-training step (second derivatives) on a small molecule batch (1,000
  edges, R = 4..19). The chunk buffers persist between calls (fresh ones cost page faults) and hold the
  messages as ``[E, R, C]`` (channels innermost, where the per-edge broadcasts vectorise).
* ``"naive"``: gather, two multiplies, ``index_add`` over the materialised message; plain autograd.
  The reference twin.
* ``"compile"``: opt-in. The same autograd Functions with kernels fused by ``torch.compile`` (inductor,
  ``dynamic=True``: compiled once per dtype/device, several seconds, needs a C++ compiler on the CPU).
  About 1.5-3x faster than ``"torch"`` per kernel on one thread. Inductor's CPU scatter is an atomic
  add, measured 10x slower than the chunked scatter with 2 threads, so the message itself stays chunked
  on a multi-threaded CPU unless ``fused_message=True``.
* ``"triton"``: fused kernels (:mod:`mlip_kernels.triton`): per receiver, a block of channels x ranks
  accumulated in registers over its CSR-sorted incoming edges (deterministic, no atomics).
* ``"auto"``: ``"triton"`` for CUDA tensors when Triton is importable and its kernels have passed a check
  against the ``"torch"`` kernels, else ``"torch"``. The check (:func:`resolve_backend`) runs once per
  device, dtype and ``(C, R)`` on first use: a small forward and backward through both kernel sets. Kernels
  that fail to compile or run, or that disagree, make ``"auto"`` fall back to ``"torch"`` for those shapes
  with one warning; the verdict is kept for the process.

Derivatives: the backward of the message is the message on the reversed graph (for ``P``) plus two edge
reductions (for ``u`` and ``w``); the backwards of those are again messages and edge reductions. So the
autograd Functions below are closed under differentiation and give gradients of any order (forces
in the loss need the second order) with every backend's kernels. The backward of a reduction needs two
messages of the same features (``message(Y, h, w) + message(Y, u, k)``); kernel sets with a
``pair_message`` do both in one pass over the edges.
"""

from __future__ import annotations

import functools
import threading
import warnings

import torch

from .scatter import MessageGraph

__all__ = ["rank_message", "rank_space_conv", "message_ops", "resolve_backend", "BACKENDS"]

BACKENDS = ("auto", "torch", "naive", "compile", "triton")

# About 4 MiB of message per chunk: chosen on a CPU with a 32 MiB L3, where it was best or within noise of
# {0.5, 1, 2, 4, 8} MiB at R = 8..190. The size is machine-dependent: on the 2 MiB-per-core-L2 Xeon of
# benchmarks/results/bench_message_threads1.json, 0.5 MiB is 1.3-1.6x faster (bench_message.py --tune).
_CPU_CHUNK_BYTES = 4 << 20
# Off the CPU (CUDA without Triton) memory, not cache, is the limit: materialise up to 256 MiB at once.
_DEVICE_CHUNK_BYTES = 256 << 20


_SCRATCH = threading.local()


def _scratch(slot: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A scratch tensor of ``shape`` that stays alive between calls (CPU only; one set per thread).

    Every kernel call used to allocate its chunk buffers afresh; above glibc's mmap/trim thresholds each
    such allocation comes back from the OS as untouched pages, and the page faults of filling a 1 MiB
    buffer measured 10x the gather itself (acetylacetone batch, 1,000 edges). The buffers never escape a
    kernel call, so one grow-only buffer per slot, dtype and thread is safe; at most a few chunk budgets.
    """
    if like.device.type != "cpu":  # device caching allocators already reuse blocks
        return like.new_empty(shape)
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    n = 1
    for s in shape:
        n *= s
    key = (slot, like.dtype)
    buf = cache.get(key)
    if buf is None or buf.numel() < n:
        buf = cache[key] = like.new_empty(max(n, 1))
    return buf[:n].view(shape)


def _rc(X: torch.Tensor) -> torch.Tensor:
    """``[N, C, R]`` -> the same values laid out ``[N, R, C]`` (a copy unless already so in memory)."""
    return X.transpose(1, 2).contiguous()


class TorchOps:
    """Pure-torch kernels over cache-sized chunks of edges (the ``"torch"`` backend).

    Inside the kernels the rank-space tensors are laid out ``[rows, R, C]`` (channels innermost): the
    per-edge factors then broadcast as a scalar per ``(e, r)`` row (``u``) or along a contiguous row
    (``w``), which TensorIterator vectorises; in the ``[rows, C, R]`` layout of the interface the inner
    loop is only ``R`` long and the two broadcast multiplies measured 5-9x slower than the gather
    (``R`` = 6..30, 32 channels). The node-sized transposes at entry and exit cost little (``E >> N``).

    Args:
        chunk_size: edges per chunk; default from a byte budget per chunk and the message row size.
    """

    name = "torch"
    any_layout = True  # node-sized inputs of any strides (transposed internally)

    def __init__(self, chunk_size: int | None = None):
        self.chunk_size = chunk_size

    def _chunk(self, t: torch.Tensor, E: int) -> int:
        if self.chunk_size is not None:
            return max(1, int(self.chunk_size))
        budget = _CPU_CHUNK_BYTES if t.device.type == "cpu" else _DEVICE_CHUNK_BYTES
        row_bytes = t.shape[1] * t.shape[2] * t.element_size()
        return max(16, min(max(E, 1), budget // max(1, row_bytes)))

    def message(self, P: torch.Tensor, u: torch.Tensor, w: torch.Tensor, g: MessageGraph) -> torch.Tensor:
        """Shapes: P ``[n_src, C, R]``, u ``[E, R]``, w ``[E, C]`` -> ``[n_dst, C, R]``."""
        return self.pair_message(P, u, w, None, None, g)

    def pair_message(self, P, u, w, h, k, g: MessageGraph) -> torch.Tensor:
        """``message(P, u, w) + message(P, h, k)`` with one gather (the second term when ``h`` is not None).

        Shapes: P ``[n_src, C, R]``, u, h ``[E, R]``, w, k ``[E, C]`` -> ``[n_dst, C, R]``.
        """
        _, C, R = P.shape
        PT = _rc(P)
        out = P.new_zeros((g.n_dst, R, C))
        E = g.num_edges
        step = self._chunk(P, E)
        # Scratch buffers reused by every chunk and call (see _scratch: fresh ones cost page faults).
        buf = _scratch(0, (min(step, E), R, C), P)
        fac = _scratch(1, (min(step, E), R, C), P) if h is not None else None
        for a in range(0, E, step):
            b = min(a + step, E)
            m = torch.index_select(PT, 0, g.src[a:b], out=buf[: b - a])
            if h is None:
                m.mul_(u[a:b, :, None]).mul_(w[a:b, None, :])
            else:  # P[src] * (u (x) w + h (x) k): the factor first, then one multiply of the gather
                f = torch.mul(u[a:b, :, None], w[a:b, None, :], out=fac[: b - a])
                f.addcmul_(h[a:b, :, None], k[a:b, None, :])
                m.mul_(f)
            out.index_add_(0, g.dst[a:b], m)
        return out.transpose(1, 2)

    def _gather_product(self, XT, YT, g, a, b, bufs):
        m = torch.index_select(XT, 0, g.dst[a:b], out=bufs[0][: b - a])
        return m.mul_(torch.index_select(YT, 0, g.src[a:b], out=bufs[1][: b - a]))

    def contract_c(self, X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, g: MessageGraph) -> torch.Tensor:
        """``out[e,r] = sum_c X[dst_e,c,r] Y[src_e,c,r] w[e,c]``. Shapes: -> ``[E, R]``."""
        return self._contract(X, Y, None, w, g)[0]

    def contract_r(self, X: torch.Tensor, Y: torch.Tensor, u: torch.Tensor, g: MessageGraph) -> torch.Tensor:
        """``out[e,c] = sum_r X[dst_e,c,r] Y[src_e,c,r] u[e,r]``. Shapes: -> ``[E, C]``."""
        return self._contract(X, Y, u, None, g)[1]

    def contract_both(self, X, Y, u, w, g: MessageGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """``(contract_c(X, Y, w), contract_r(X, Y, u))`` sharing one gather of ``X[dst] * Y[src]``.

        Shapes: -> ``[E, R]``, ``[E, C]``.
        """
        return self._contract(X, Y, u, w, g)

    def _contract(self, X, Y, u, w, g: MessageGraph):
        E, (_, C, R) = g.num_edges, X.shape
        XT, YT = _rc(X), _rc(Y)
        out_c = X.new_empty(E, R) if w is not None else None
        out_r = X.new_empty(E, C) if u is not None else None
        step = self._chunk(X, E)
        bufs = [_scratch(i, (min(step, E), R, C), X) for i in range(2)]
        for a in range(0, E, step):
            b = min(a + step, E)
            m = self._gather_product(XT, YT, g, a, b, bufs)
            if w is not None:
                # multiply-then-sum over the contiguous channel axis: batched GEMV (bmm) measured 2-6x slower
                mw = m if u is None else torch.mul(m, w[a:b, None, :], out=bufs[1][: b - a])
                if u is None:
                    mw.mul_(w[a:b, None, :])
                torch.sum(mw, 2, out=out_c[a:b])
            if u is not None:
                torch.sum(m.mul_(u[a:b, :, None]), 1, out=out_r[a:b])
        return out_c, out_r


def _k_message(P, u, w, src, dst, n_dst: int):
    out = P.new_zeros((n_dst, P.shape[1], P.shape[2]))
    return out.index_add_(0, dst, P[src] * u[:, None, :] * w[:, :, None])


def _k_contract_c(X, Y, w, xi, yi):
    return (X[xi] * Y[yi] * w[:, :, None]).sum(1)


def _k_contract_r(X, Y, u, xi, yi):
    return (X[xi] * Y[yi] * u[:, None, :]).sum(2)


@functools.cache
def _compiled(name: str):
    # Cached so each kernel is traced once per process (dynamic shapes: batches differ in E and N).
    return torch.compile(globals()[f"_k_{name}"], dynamic=True)


class CompiledOps(TorchOps):
    """Kernels fused by ``torch.compile`` (the ``"compile"`` backend); forward-only, inside the Functions.

    Args:
        fused_message: compile the message too (default: unless the CPU runs more than one thread).
        chunk_size: for the chunked message.
    """

    name = "compile"
    any_layout = False  # inductor specialises on strides: feed it one layout

    def __init__(self, fused_message: bool | None = None, chunk_size: int | None = None):
        super().__init__(chunk_size)
        self.fused_message = fused_message

    def message(self, P, u, w, g: MessageGraph) -> torch.Tensor:
        fused = self.fused_message
        if fused is None:
            fused = P.device.type != "cpu" or torch.get_num_threads() == 1
        if not fused or g.num_edges == 0:
            return super().message(P, u, w, g)
        return _compiled("message")(P, u, w, g.src, g.dst, g.n_dst)

    def contract_c(self, X, Y, w, g: MessageGraph) -> torch.Tensor:
        if g.num_edges == 0:
            return X.new_zeros(0, X.shape[2])
        return _compiled("contract_c")(X, Y, w, g.dst, g.src)

    def contract_r(self, X, Y, u, g: MessageGraph) -> torch.Tensor:
        if g.num_edges == 0:
            return X.new_zeros(0, X.shape[1])
        return _compiled("contract_r")(X, Y, u, g.dst, g.src)

    def contract_both(self, X, Y, u, w, g: MessageGraph) -> tuple[torch.Tensor, torch.Tensor]:
        # Inductor does not share the gather between two reductions (measured: no gain), so run both.
        return self.contract_c(X, Y, w, g), self.contract_r(X, Y, u, g)


def _pair_message(Z, u, w, h, k, graph: MessageGraph, ops):
    """``message(Z, h, w) + message(Z, u, k)``, skipping a term whose gradient is None."""
    if h is not None and k is not None and hasattr(ops, "pair_message"):
        return _PairMessage.apply(Z, h, w, u, k, graph, ops)
    via_h = _Message.apply(Z, h, w, graph, ops) if h is not None else None
    via_k = _Message.apply(Z, u, k, graph, ops) if k is not None else None
    return via_k if via_h is None else via_h if via_k is None else via_h + via_k


def _node(ops, X: torch.Tensor) -> torch.Tensor:
    """Node-sized input as the kernels want it (the torch kernels transpose it themselves)."""
    return X if getattr(ops, "any_layout", False) else X.contiguous()


class _Message(torch.autograd.Function):
    @staticmethod
    def forward(ctx, P, u, w, graph, ops):
        ctx.save_for_backward(P, u, w)
        ctx.graph, ctx.ops = graph, ops
        return ops.message(_node(ops, P), u.contiguous(), w.contiguous(), graph)

    @staticmethod
    def backward(ctx, G):
        P, u, w = ctx.saved_tensors
        g, ops = ctx.graph, ctx.ops
        need = ctx.needs_input_grad
        gP = _Message.apply(G, u, w, g.T, ops) if need[0] else None
        gu = gw = None
        if need[1] and need[2]:  # the usual case: one pass over the edges for both
            gu, gw = _ContractBoth.apply(G, P, u, w, g, ops)
        elif need[1]:
            gu = _ContractC.apply(G, P, w, g, ops)
        elif need[2]:
            gw = _ContractR.apply(G, P, u, g, ops)
        return gP, gu, gw, None, None


class _PairMessage(torch.autograd.Function):
    """``message(P, u, w) + message(P, h, k)`` in one pass over the edges (the backward of a contraction)."""

    @staticmethod
    def forward(ctx, P, u, w, h, k, graph, ops):
        ctx.save_for_backward(P, u, w, h, k)
        ctx.graph, ctx.ops = graph, ops
        c = torch.Tensor.contiguous
        return ops.pair_message(_node(ops, P), c(u), c(w), c(h), c(k), graph)

    @staticmethod
    def backward(ctx, G):
        P, u, w, h, k = ctx.saved_tensors
        g, ops = ctx.graph, ctx.ops
        need = ctx.needs_input_grad
        gP = _PairMessage.apply(G, u, w, h, k, g.T, ops) if need[0] else None
        grads = []
        for a, b, need_a, need_b in ((u, w, need[1], need[2]), (h, k, need[3], need[4])):
            ga = gb = None
            if need_a and need_b:
                ga, gb = _ContractBoth.apply(G, P, a, b, g, ops)
            elif need_a:
                ga = _ContractC.apply(G, P, b, g, ops)
            elif need_b:
                gb = _ContractR.apply(G, P, a, g, ops)
            grads += [ga, gb]
        return (gP, *grads, None, None)


class _ContractBoth(torch.autograd.Function):
    """``(sum_c X[dst]Y[src] w, sum_r X[dst]Y[src] u)``: the message's gradients w.r.t. ``u`` and ``w``."""

    @staticmethod
    def forward(ctx, X, Y, u, w, graph, ops):
        ctx.save_for_backward(X, Y, u, w)
        ctx.graph, ctx.ops = graph, ops
        ctx.set_materialize_grads(False)  # an unused output costs no kernel launches in backward
        return ops.contract_both(_node(ops, X), _node(ops, Y), u.contiguous(), w.contiguous(), graph)

    @staticmethod
    def backward(ctx, h, k):
        X, Y, u, w = ctx.saved_tensors
        g, ops = ctx.graph, ctx.ops
        need = ctx.needs_input_grad
        gX = gY = gu = gw = None
        if need[0]:
            gX = _pair_message(Y, u, w, h, k, g, ops)
        if need[1]:
            gY = _pair_message(X, u, w, h, k, g.T, ops)
        want_u, want_w = need[2] and k is not None, need[3] and h is not None
        if want_u and want_w:
            gu, gw = _ContractBoth.apply(X, Y, h, k, g, ops)
        elif want_u:
            gu = _ContractC.apply(X, Y, k, g, ops)
        elif want_w:
            gw = _ContractR.apply(X, Y, h, g, ops)
        return gX, gY, gu, gw, None, None


class _ContractC(torch.autograd.Function):
    """``out[e,r] = sum_c X[dst_e,c,r] Y[src_e,c,r] w[e,c]`` (the gradient of the message w.r.t. ``u``)."""

    @staticmethod
    def forward(ctx, X, Y, w, graph, ops):
        ctx.save_for_backward(X, Y, w)
        ctx.graph, ctx.ops = graph, ops
        return ops.contract_c(_node(ops, X), _node(ops, Y), w.contiguous(), graph)

    @staticmethod
    def backward(ctx, h):
        X, Y, w = ctx.saved_tensors
        g, ops = ctx.graph, ctx.ops
        need = ctx.needs_input_grad
        gX = _Message.apply(Y, h, w, g, ops) if need[0] else None
        gY = _Message.apply(X, h, w, g.T, ops) if need[1] else None
        gw = _ContractR.apply(X, Y, h, g, ops) if need[2] else None
        return gX, gY, gw, None, None


class _ContractR(torch.autograd.Function):
    """``out[e,c] = sum_r X[dst_e,c,r] Y[src_e,c,r] u[e,r]`` (the gradient of the message w.r.t. ``w``)."""

    @staticmethod
    def forward(ctx, X, Y, u, graph, ops):
        ctx.save_for_backward(X, Y, u)
        ctx.graph, ctx.ops = graph, ops
        return ops.contract_r(_node(ops, X), _node(ops, Y), u.contiguous(), graph)

    @staticmethod
    def backward(ctx, k):
        X, Y, u = ctx.saved_tensors
        g, ops = ctx.graph, ctx.ops
        need = ctx.needs_input_grad
        gX = _Message.apply(Y, u, k, g, ops) if need[0] else None
        gY = _Message.apply(X, u, k, g.T, ops) if need[1] else None
        gu = _ContractC.apply(X, Y, k, g, ops) if need[2] else None
        return gX, gY, gu, None, None


def _naive_message(P, u, w, g: MessageGraph) -> torch.Tensor:
    m = P.index_select(0, g.src) * u[:, None, :] * w[:, :, None]
    return P.new_zeros((g.n_dst,) + tuple(P.shape[1:])).index_add(0, g.dst, m)


def _triton_candidate(device: torch.device) -> bool:
    """Whether ``"auto"`` considers the Triton kernels for tensors on ``device`` (CUDA, Triton importable)."""
    from . import triton as _tri

    return device.type == "cuda" and _tri.HAS_TRITON


#: ``"auto"``'s verdicts on the Triton kernels per (device, dtype, C, R): True once they matched the torch kernels.
_TRITON_VERDICTS: dict[tuple[str, torch.dtype, int, int], bool] = {}
_VERDICT_LOCK = threading.Lock()
# Relative agreement the check demands: float32 sums in another order differ by ~1e-7 relative.
_CHECK_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
_CHECK_RTOL_LOW_PRECISION = 3e-2


def _check_triton(device: torch.device, dtype: torch.dtype, C: int, R: int) -> str | None:
    """Why the Triton kernels cannot be trusted for these shapes, or None when they match the torch kernels.

    One small problem (7 senders, 6 receivers of which one has no edges, 24 edges, the caller's ``C`` and
    ``R``) through the message and its backward (which runs the reversed message and both edge reductions)
    with each kernel set. Triton's outputs are NaN-poisoned first, so an output a kernel fails to write shows.
    """
    gen = torch.Generator().manual_seed(0)
    n_src, n_dst, E = 7, 6, 24
    src = torch.randint(0, n_src, (E,), generator=gen)
    dst = torch.randint(0, n_dst - 1, (E,), generator=gen)
    shapes = ((n_src, C, R), (E, R), (E, C), (n_dst, C, R))
    data = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in shapes]
    results = []
    try:
        # fresh autograd-tracked tensors even when called under no_grad or inference_mode
        with torch.inference_mode(False), torch.enable_grad():
            graph = MessageGraph(src.to(device), dst.to(device), n_src, n_dst)
            for ops in (_triton_kernels(poison=True), TorchOps()):
                P, u, w, G = (t.to(device=device, dtype=dtype, copy=True) for t in data)
                for t in (P, u, w):
                    t.requires_grad_()
                out = _Message.apply(P, u, w, graph, ops)
                grads = torch.autograd.grad((out * G).sum(), (P, u, w))
                results.append([t.detach().to("cpu", torch.float64) for t in (out, *grads)])
    except Exception as exc:  # fails to compile, launch or run: any of these means "do not use it"
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first}"[:240]
    rtol = _CHECK_RTOL.get(dtype, _CHECK_RTOL_LOW_PRECISION)
    for name, got, ref in zip(("output", "grad P", "grad u", "grad w"), *results):
        if not torch.isfinite(got).all():
            return f"{name} has non-finite values"
        err = float((got - ref).norm() / ref.norm().clamp_min(1e-300))
        if err > rtol:
            return f"{name} differs by {err:.1e} (relative; allowed {rtol:.0e})"
    return None


def _auto_backend(P: torch.Tensor) -> str:
    """``"auto"`` for rank-space features ``P [N, C, R]``: Triton where checked good, else torch."""
    if not _triton_candidate(P.device):
        return "torch"
    key = (str(P.device), P.dtype, int(P.shape[1]), int(P.shape[2]))
    with _VERDICT_LOCK:  # one check per key even with several threads
        verdict = _TRITON_VERDICTS.get(key)
        if verdict is None:
            why = _check_triton(P.device, *key[1:])
            verdict = _TRITON_VERDICTS[key] = why is None
            if why is not None:
                warnings.warn(
                    f"message backend 'auto': the Triton kernels failed their check against the torch kernels on "
                    f"{key[0]} ({P.dtype}, C={key[2]}, R={key[3]}): {why}; using the torch kernels for these shapes",
                    RuntimeWarning,
                    stacklevel=4,
                )
    return "triton" if verdict else "torch"


def resolve_backend(backend: str, P: torch.Tensor) -> str:
    """The concrete backend for rank-space features like ``P`` (device, dtype, ``C``, ``R``); checks it can run.

    ``"auto"`` becomes ``"triton"`` only for CUDA tensors whose (device, dtype, C, R) passed the check
    against the torch kernels (run here on first use, then cached), else ``"torch"``.

    Shapes:
        P ``[N, C, R]`` (only its device, dtype and shape are used; ``N`` may be 0).
    """
    from . import triton as _tri

    if backend == "auto":
        return _auto_backend(P)
    if backend not in BACKENDS:
        raise ValueError(f"unknown message backend {backend!r}; expected one of {BACKENDS}")
    if backend == "triton" and not _tri.available(P.device):
        raise RuntimeError(f"message backend 'triton' cannot run on {P.device}: {_tri.why_unavailable(P.device)}")
    return backend


def _triton_kernels(**options):
    """The Triton kernel set (one function, so tests can stand in a fake or broken one)."""
    from .triton import TritonOps

    return TritonOps(**options)


def message_ops(backend: str, **options):
    """The kernel set of a concrete backend (``"torch"``, ``"compile"``, ``"triton"``).

    Args:
        options: ``chunk_size`` (torch); ``fused_message``, ``chunk_size`` (compile); ``block_c``,
            ``block_r``, ``poison`` (triton).
    """
    if backend == "torch":
        return TorchOps(**options)
    if backend == "compile":
        return CompiledOps(**options)
    if backend == "triton":
        return _triton_kernels(**options)
    raise ValueError(f"no kernel set for backend {backend!r}")


def rank_message(
    P: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    n_out: int,
    backend: str = "auto",
    *,
    graph: MessageGraph | None = None,
    **options,
) -> torch.Tensor:
    """Rank-space message passing ``out[n,c,r] = sum_{e: dst_e = n} P[src_e,c,r] * u[e,r] * w[e,c]``.

    Differentiable to any order in ``P``, ``u`` and ``w`` with every backend. Receivers without incoming
    edges get zeros.

    Args:
        P: sender features in rank space (``x @ A``).
        u: edge factor (``Y(r_e) @ B``).
        w: per-edge, per-channel weights (radial network output).
        src, dst: sender and receiver of each edge (int64).
        n_out: number of receivers.
        backend: ``"auto"``, ``"torch"``, ``"naive"``, ``"compile"`` or ``"triton"`` (module docstring).
        graph: a prebuilt :class:`~mlip_kernels.scatter.MessageGraph` for these edges; reuse it across
            layers so the CSR sort the Triton kernels need is done once. ``src``/``dst`` may then be None.
        options: kernel options, see :func:`message_ops`.

    Shapes:
        P ``[N_src, C, R]``, u ``[E, R]``, w ``[E, C]``, src ``[E]``, dst ``[E]`` -> ``[n_out, C, R]``.
    """
    if P.dim() != 3:
        raise ValueError(f"P must be [N_src, C, R], got shape {tuple(P.shape)}")
    _, C, R = P.shape
    if graph is None:
        graph = MessageGraph(src, dst, P.shape[0], n_out)
    elif graph.n_src != P.shape[0] or graph.n_dst != n_out:
        raise ValueError(f"graph is {graph}, but P has {P.shape[0]} rows and n_out={n_out}")
    E = graph.num_edges
    if tuple(u.shape) != (E, R) or tuple(w.shape) != (E, C):
        raise ValueError(f"expected u [{E}, {R}] and w [{E}, {C}], got {tuple(u.shape)} and {tuple(w.shape)}")
    if not (P.dtype == u.dtype == w.dtype):
        raise ValueError(f"P, u, w must share a dtype, got {P.dtype}, {u.dtype}, {w.dtype}")
    if not (P.device == u.device == w.device == graph.src.device):
        raise ValueError("P, u, w, src and dst must be on one device")
    backend = resolve_backend(backend, P)
    if backend == "naive":
        return _naive_message(P, u, w, graph)
    return _Message.apply(P, u, w, graph, message_ops(backend, **options))


def rank_space_conv(
    x: torch.Tensor,
    A: torch.Tensor,
    Y_edge: torch.Tensor,
    B: torch.Tensor,
    w: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    C_factor: torch.Tensor,
    n_nodes: int,
    backend: str = "auto",
    *,
    graph: MessageGraph | None = None,
    **options,
) -> torch.Tensor:
    """Low-rank convolution: project, message, back-project.

    ``out[n] = sum_{e: dst_e = n} (((x[src_e] @ A) * (Y_e @ B) * w_e) @ C)`` computed as
    ``rank_message(x @ A, Y @ B, w) @ C``, i.e. the :func:`mlip_kernels.tp.lowrank_product` of every edge
    summed into its receiver, with both projections done per node instead of per edge.

    Shapes:
        x ``[N, C, d_in]``, A ``(d_in, R)``, Y_edge ``[E, d_sh]``, B ``(d_sh, R)``, w ``[E, C]``,
        src ``[E]``, dst ``[E]``, C_factor ``(R, d_out)`` -> ``[n_nodes, C, d_out]``.
    """
    P = _node_matmul(x, A)
    u = Y_edge @ B
    m = rank_message(P, u, w, src, dst, n_nodes, backend, graph=graph, **options)
    return _node_matmul(m, C_factor)


def _node_matmul(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``x @ M``, written out as the products ``matmul`` runs (so the same numbers): one ``mm`` over the
    folded nodes and channels for a contiguous ``x`` (or an ``M`` that requires grad), else one ``bmm``
    against ``M`` broadcast over the nodes.

    ``matmul``'s own reshape of the broadcast ``M`` makes ``torch.export`` specialise the node count to
    ``!= 1`` (:mod:`mlip_cli.export`); these two forms do not.

    Shapes:
        x ``[N, C, d]``, M ``(d, k)`` -> ``[N, C, k]``.
    """
    if x.is_contiguous() or M.requires_grad:
        return (x.reshape(-1, x.shape[2]) @ M).view(x.shape[0], x.shape[1], M.shape[1])
    return torch.bmm(x, M.expand(x.shape[0], -1, -1))
