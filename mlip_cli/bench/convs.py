"""The convolutions ``mlip bench tp`` compares; all do the job of one e3nn convolution.

Job: node features ``x [N, C, d]``, edge harmonics ``Y [E, d]`` (``d = (L+1)^2``), per-edge channel weights
``w [E, C]``; ``out[n] = sum_{e: dst_e = n} w_e * tp(x[src_e], Y_e)`` with ``out [N, C, d]``. Each object
takes its inputs in its native layout (:meth:`native_inputs`) so the timed call does no conversions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Graph", "E3nnConv", "DenseCGConv", "PerEdgeConv", "RankSpaceConv"]


@dataclass
class Graph:
    """Edges ``src -> dst`` over ``n`` nodes, with the kernels' :class:`MessageGraph` built once."""

    src: torch.Tensor
    dst: torch.Tensor
    n: int

    def __post_init__(self):
        from mlip_kernels.scatter import MessageGraph

        self.mg = MessageGraph(self.src, self.dst, self.n, self.n)


def _scatter(m: torch.Tensor, g: Graph) -> torch.Tensor:
    return m.new_zeros((g.n,) + tuple(m.shape[1:])).index_add(0, g.dst, m)


class _Conv:
    """Base: ours take ``(x, Y, w)`` as they are and return ``[N, C, d]``."""

    paths: list[tuple[int, int, int]]
    rank: int | None = None
    reference = "all"  # path set of the CG reference this conv should equal (measure.path_weights)

    def native_inputs(self, x, Y, w):
        return x, Y, w

    def from_ours(self, out):
        """Our ``[N, C, d]`` layout -> this conv's output layout."""
        return out

    def to_ours(self, out):
        return out

    def ours(self, g: Graph):
        """``(x, Y, w) -> [N, C, d]`` in our layout (for the error checks)."""
        return lambda x, Y, w: self.to_ours(self(g, *self.native_inputs(x, Y, w)))


class E3nnConv(_Conv):
    """The e3nn peer: ``uvu`` TP on gathered sender features, one weight per edge, path and channel.

    ``w`` is repeated over the paths so the peer computes the same function as the even-path CG.
    """

    reference = "even"

    def __init__(self, L: int, channels: int, dtype, device):
        from .peers import e3nn_paths, e3nn_uvu_tp

        self.L, self.C = L, channels
        # e3nn rounds its Wigner 3j constants to the default dtype at construction; build a float64
        # instance under a float64 default so the float64 error checks see e3nn's math, not float32 constants.
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            self.tp = e3nn_uvu_tp(L, channels, match_cg=True).to(device=device)
        finally:
            torch.set_default_dtype(before)
        self.paths = e3nn_paths(self.tp)
        self.impl = "e3nn.o3.TensorProduct uvu, shared_weights=False, x[src] gather + index_add scatter"

    def native_inputs(self, x, Y, w):
        from .peers import to_e3nn_layout

        return to_e3nn_layout(x, self.L), Y, w.repeat(1, len(self.paths))

    def from_ours(self, out):
        from .peers import to_e3nn_layout

        return to_e3nn_layout(out, self.L)

    def to_ours(self, out):
        from .peers import from_e3nn_layout

        return from_e3nn_layout(out, self.L, self.C)

    def __call__(self, g: Graph, x, Y, W):
        return _scatter(self.tp(x.index_select(0, g.src), Y, W), g)


class DenseCGConv(_Conv):
    """Exact CG, all paths, one weight per channel shared by the paths, per edge.

    Because the weight is shared, the harmonics fold into one coupling matrix per edge,
    ``K_e[i, k] = sum_j M[i, j, k] Y_e[j]`` (``M = shared_cg_tensor``), and the product is one batched
    matmul ``x[src_e] @ K_e``: O(C d^2) per edge and no per-path intermediates. (The rank-one-per-(path,
    m1, m2) factors of ``make_tp("cg")`` would materialise ``E x C x R`` with R = 9,444 at L = 6: 10 GB.)
    """

    def __init__(self, L: int, dtype, device):
        from mlip_kernels.cg import shared_cg_tensor, tp_paths

        d = (L + 1) ** 2
        M = torch.as_tensor(shared_cg_tensor(L, L, L))
        self.Mj = M.permute(1, 0, 2).reshape(d, d * d).to(dtype=dtype, device=device)  # [j, (i, k)]
        self.d, self.paths = d, tp_paths(L, L, L)
        self.impl = "per-edge coupling K_e = Y_e . M (all CG paths), bmm(x[src], K_e) * w, index_add"

    def __call__(self, g: Graph, x, Y, w):
        K = (Y @ self.Mj).view(-1, self.d, self.d)
        return _scatter(torch.bmm(x.index_select(0, g.src), K) * w[:, :, None], g)


class PerEdgeConv(_Conv):
    """A :class:`mlip_kernels.tp.LowRankTP` applied to every edge, then summed per receiver."""

    def __init__(self, tp, reference: str):
        self.tp, self.rank, self.paths, self.reference = tp, tp.rank, tp.paths, reference
        self.impl = f"make_tp({tp.kind!r}) on x[src] and Y per edge: ((x A) * (Y B) * w) C, index_add"

    def __call__(self, g: Graph, x, Y, w):
        return _scatter(self.tp(x.index_select(0, g.src), Y[:, None, :], weights=w), g)


class RankSpaceConv(_Conv):
    """:func:`mlip_kernels.message.rank_space_conv` with a low-rank product's factors (end to end:
    project ``x A`` per node and ``Y B`` per edge, gather-multiply-scatter in rank space, ``@ C``)."""

    def __init__(self, tp, reference: str, backend: str, channels: int):
        from mlip_kernels.message import resolve_backend

        self.tp, self.rank, self.paths, self.reference = tp, tp.rank, tp.paths, reference
        # resolve "auto" here (its Triton check, if any, runs now and not inside the timed calls)
        like = torch.empty(0, channels, tp.rank, dtype=tp.A.dtype, device=tp.A.device)
        self.backend = resolve_backend(backend, like)
        asked = "" if backend == self.backend else f" (asked {backend!r})"
        self.impl = f"rank_space_conv, {tp.kind} factors, message backend {self.backend!r}{asked}"

    def __call__(self, g: Graph, x, Y, w):
        from mlip_kernels.message import rank_space_conv

        tp = self.tp
        return rank_space_conv(x, tp.A, Y, tp.B, w, g.src, g.dst, tp.C, g.n, self.backend, graph=g.mg)
