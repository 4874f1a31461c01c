"""The edge convolution ``out[n] = sum_{e: dst_e = n} w_e * TP(x[src_e], Y(r_e))`` with a pluggable TP.

Kinds (``tp=``), all with *path-weight sharing*: one weight ``w_e[c]`` per edge and channel multiplies every
path of the product, so the product itself is a fixed tensor:

* ``"tdn"``: the CP (TDN) factorisation of the shared CG tensor (:func:`mlip_kernels.make_tp` kind
  ``"cp"``), all paths of both parities. Equivariant up to the fit error of the factors
  (:attr:`EdgeConvolution.rel_error`; about 1e-15 at L = 1, 1e-13 at L = 2, 1e-6 at L = 3 for the default
  ranks 8 / 30 / 90).
* ``"gaunt"``: the exact Gaunt product on a sphere quadrature (even paths only, so parity is preserved).
* ``"cg"``: the exact shared CG tensor applied densely to every edge, then scattered: the baseline. It is the
  same function as ``"tdn"`` (to the CP error); only the way it is computed differs.

``"tdn"`` and ``"gaunt"`` use the rank-space fast path (:func:`mlip_kernels.message.rank_space_conv`): the
node features are projected once per node (``x @ A``), each edge multiplies by ``Y_e @ B`` and ``w_e`` in
rank space and is scattered to its receiver, and the back projection ``@ C`` is applied once per node.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_kernels.cg import shared_cg_tensor
from mlip_kernels.message import rank_space_conv
from mlip_kernels.scatter import MessageGraph, scatter_sum
from mlip_kernels.tp import make_tp

__all__ = ["EdgeConvolution", "TP_KINDS"]

TP_KINDS = ("tdn", "gaunt", "cg")


class EdgeConvolution(nn.Module):
    """Sum over incoming edges of the channel-wise product of sender features with ``Y(r_e)``.

    Args:
        tp: ``"tdn"``, ``"gaunt"`` or ``"cg"`` (module docstring).
        lmax: degree ``L`` of the node features, the edge harmonics and the output.
        cp_rank: CP rank for ``"tdn"`` (None: :func:`mlip_kernels.cp.default_rank`).
        gaunt_grid: quadrature for ``"gaunt"`` (``"auto"``, ``"lebedev"``, ``"gl"``).
        backend: rank-space message backend (:mod:`mlip_kernels.message`); never changes the numbers.

    Shapes:
        x ``[N, C, d]``, Y ``[E, d]``, w ``[E, C]`` -> ``[N, C, d]``, ``d = (L+1)^2``.
    """

    def __init__(self, tp: str, lmax: int, cp_rank: int | None = None, gaunt_grid: str = "auto",
                 backend: str = "auto"):
        super().__init__()
        if tp not in TP_KINDS:
            raise ValueError(f"unknown tensor product {tp!r}; expected one of {TP_KINDS}")
        self.kind, self.lmax, self.backend = tp, int(lmax), backend
        self.rel_error = 0.0
        if tp == "cg":
            self.tp = None
            # M[i, j, k]: out_k = sum_ij M[i,j,k] x_i Y_j. Built in float64; the model's .to(dtype) casts it.
            self.register_buffer("cg_tensor", torch.from_numpy(shared_cg_tensor(lmax, lmax, lmax)))
        else:
            kind = "cp" if tp == "tdn" else "gaunt"
            opts = {"rank": cp_rank} if tp == "tdn" else {"grid": gaunt_grid}
            self.tp = make_tp(kind, lmax, dtype=torch.float64, **opts)
            self.rel_error = self.tp.rel_error

    @property
    def rank(self) -> int | None:
        """Rank ``R`` of the low-rank product (None for the dense ``"cg"``)."""
        return None if self.tp is None else self.tp.rank

    def forward(self, x: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, graph: MessageGraph) -> torch.Tensor:
        if self.tp is not None:
            return rank_space_conv(x, self.tp.A, Y, self.tp.B, w, graph.src, graph.dst, self.tp.C, graph.n_dst,
                                   self.backend, graph=graph)
        # Dense per edge: fold Y into M first (E d^3), then one batched [C, d] @ [d, d] per edge (E C d^2).
        K = torch.einsum("ej,ijk->eik", Y, self.cg_tensor)
        m = torch.bmm(x.index_select(0, graph.src), K) * w[:, :, None]
        return scatter_sum(m, graph.dst, graph.n_dst)

    def extra_repr(self) -> str:
        return f"tp={self.kind!r}, lmax={self.lmax}, rank={self.rank}, backend={self.backend!r}"
