"""Rank-space message passing: ``out[n,c,r] = sum_{e: dst_e = n} P[src_e,c,r] * u[e,r] * w[e,c]``.

This is the fast path of DESIGN.md section 3: node features are projected into rank space once per node
(``P = x @ A``), the edge factor ``u = Y(r_e) @ B`` and the radial weights ``w`` are cheap, and the back
projection ``@ C`` happens once per node after the scatter, so an edge costs O(C R) instead of O(d R C).

Backends (all give the same numbers up to float rounding; saved models never depend on the choice):

* ``"torch"``: the default on the CPU. The same gather-multiply-scatter as ``"naive"`` but over chunks of
  edges small enough (about 4 MiB of message) to stay in cache, inside autograd Functions that never
  keep the ``E x C x R`` message alive. Measured 10-25x faster than ``"naive"`` at R = 50..190, where the
  materialised message (50-200 MB) is paid in page faults and DRAM traffic (benchmarks/bench_message.py).
* ``"naive"``: gather, two multiplies, ``index_add`` over the materialised message; plain autograd.
  The reference twin.
* ``"compile"``: opt-in. The same autograd Functions with kernels fused by ``torch.compile`` (inductor,
  ``dynamic=True``: compiled once per dtype/device, several seconds, needs a C++ compiler on the CPU).
  About 1.5-3x faster than ``"torch"`` per kernel on one thread. Inductor's CPU scatter is an atomic
  add, measured 10x slower than the chunked scatter with 2 threads, so the message itself stays chunked
  on a multi-threaded CPU unless ``fused_message=True``.
* ``"triton"``: fused kernels (:mod:`mlip_kernels.triton`): per receiver, a block of channels x ranks
  accumulated in registers over its CSR-sorted incoming edges (deterministic, no atomics).
* ``"auto"``: ``"triton"`` when Triton is importable and the tensors are on a CUDA device, else ``"torch"``.

Derivatives: the backward of the message is the message on the reversed graph (for ``P``) plus two edge
reductions (for ``u`` and ``w``); the backwards of those are again messages and edge reductions. So the
autograd Functions below are closed under differentiation and give gradients of any order (forces
in the loss need the second order) with every backend's kernels.
"""

from __future__ import annotations

import functools

import torch

from .scatter import MessageGraph

__all__ = ["rank_message", "rank_space_conv", "message_ops", "resolve_backend", "BACKENDS"]

BACKENDS = ("auto", "torch", "naive", "compile", "triton")

# About 4 MiB of message per chunk (a few such buffers stay in the 32 MiB L3 of the reference CPU):
# best or within noise of the best of {0.5, 1, 2, 4, 8} MiB at R = 8..190 (bench_message.py --tune).
_CPU_CHUNK_BYTES = 4 << 20
# Off the CPU (CUDA without Triton) memory, not cache, is the limit: materialise up to 256 MiB at once.
_DEVICE_CHUNK_BYTES = 256 << 20


class TorchOps:
    """Pure-torch kernels over cache-sized chunks of edges (the ``"torch"`` backend).

    Args:
        chunk_size: edges per chunk; default from a byte budget per chunk and the message row size.
    """

    name = "torch"

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
        out = P.new_zeros((g.n_dst,) + tuple(P.shape[1:]))
        E = g.num_edges
        step = self._chunk(P, E)
        # One scratch buffer reused by every chunk: a fresh multi-MiB tensor per chunk costs page faults
        # (glibc serves it by mmap) that measured as much as the arithmetic.
        buf = P.new_empty((min(step, E),) + tuple(P.shape[1:]))
        for a in range(0, E, step):
            b = min(a + step, E)
            m = torch.index_select(P, 0, g.src[a:b], out=buf[: b - a])
            m.mul_(u[a:b, None, :]).mul_(w[a:b, :, None])
            out.index_add_(0, g.dst[a:b], m)
        return out

    def _gather_product(self, X, Y, g, a, b, bufs):
        m = torch.index_select(X, 0, g.dst[a:b], out=bufs[0][: b - a])
        return m.mul_(torch.index_select(Y, 0, g.src[a:b], out=bufs[1][: b - a]))

    def contract_c(self, X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, g: MessageGraph) -> torch.Tensor:
        """``out[e,r] = sum_c X[dst_e,c,r] Y[src_e,c,r] w[e,c]``. Shapes: -> ``[E, R]``."""
        E = g.num_edges
        out = X.new_empty(E, X.shape[2])
        step = self._chunk(X, E)
        bufs = [X.new_empty((min(step, E),) + tuple(X.shape[1:])) for _ in range(2)]
        for a in range(0, E, step):
            b = min(a + step, E)
            m = self._gather_product(X, Y, g, a, b, bufs)
            # [b, 1, C] @ [b, C, R]: the channel reduction as a batched GEMV, written in place.
            torch.bmm(w[a:b, None, :], m, out=out[a:b, None, :])
        return out

    def contract_r(self, X: torch.Tensor, Y: torch.Tensor, u: torch.Tensor, g: MessageGraph) -> torch.Tensor:
        """``out[e,c] = sum_r X[dst_e,c,r] Y[src_e,c,r] u[e,r]``. Shapes: -> ``[E, C]``."""
        E = g.num_edges
        out = X.new_empty(E, X.shape[1])
        step = self._chunk(X, E)
        bufs = [X.new_empty((min(step, E),) + tuple(X.shape[1:])) for _ in range(2)]
        for a in range(0, E, step):
            b = min(a + step, E)
            m = self._gather_product(X, Y, g, a, b, bufs).mul_(u[a:b, None, :])
            # multiply-then-sum over the contiguous rank axis measured 2x faster than bmm here.
            torch.sum(m, 2, out=out[a:b])
        return out

    def contract_both(self, X, Y, u, w, g: MessageGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """``(contract_c(X, Y, w), contract_r(X, Y, u))`` sharing one gather of ``X[dst] * Y[src]``.

        Shapes: -> ``[E, R]``, ``[E, C]``.
        """
        E, (_, C, R) = g.num_edges, X.shape
        out_c, out_r = X.new_empty(E, R), X.new_empty(E, C)
        step = self._chunk(X, E)
        bufs = [X.new_empty((min(step, E), C, R)) for _ in range(2)]
        for a in range(0, E, step):
            b = min(a + step, E)
            m = self._gather_product(X, Y, g, a, b, bufs)
            torch.bmm(w[a:b, None, :], m, out=out_c[a:b, None, :])
            torch.sum(m.mul_(u[a:b, None, :]), 2, out=out_r[a:b])
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
    via_h = _Message.apply(Z, h, w, graph, ops) if h is not None else None
    via_k = _Message.apply(Z, u, k, graph, ops) if k is not None else None
    return via_k if via_h is None else via_h if via_k is None else via_h + via_k


class _Message(torch.autograd.Function):
    @staticmethod
    def forward(ctx, P, u, w, graph, ops):
        ctx.save_for_backward(P, u, w)
        ctx.graph, ctx.ops = graph, ops
        return ops.message(P.contiguous(), u.contiguous(), w.contiguous(), graph)

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


class _ContractBoth(torch.autograd.Function):
    """``(sum_c X[dst]Y[src] w, sum_r X[dst]Y[src] u)``: the message's gradients w.r.t. ``u`` and ``w``."""

    @staticmethod
    def forward(ctx, X, Y, u, w, graph, ops):
        ctx.save_for_backward(X, Y, u, w)
        ctx.graph, ctx.ops = graph, ops
        ctx.set_materialize_grads(False)  # an unused output costs no kernel launches in backward
        return ops.contract_both(X.contiguous(), Y.contiguous(), u.contiguous(), w.contiguous(), graph)

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
        return ops.contract_c(X.contiguous(), Y.contiguous(), w.contiguous(), graph)

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
        return ops.contract_r(X.contiguous(), Y.contiguous(), u.contiguous(), graph)

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


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to a concrete backend for tensors on ``device``; check the others exist."""
    from . import triton as _tri

    if backend == "auto":
        return "triton" if (device.type == "cuda" and _tri.HAS_TRITON) else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown message backend {backend!r}; expected one of {BACKENDS}")
    if backend == "triton" and not _tri.available(device):
        raise RuntimeError(f"message backend 'triton' cannot run on {device}: {_tri.why_unavailable(device)}")
    return backend


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
        from .triton import TritonOps

        return TritonOps(**options)
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
    backend = resolve_backend(backend, P.device)
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
    P = x @ A
    u = Y_edge @ B
    m = rank_message(P, u, w, src, dst, n_nodes, backend, graph=graph, **options)
    return m @ C_factor
