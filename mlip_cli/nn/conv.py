"""The edge convolution ``out[n] = sum_{e: dst_e = n} w_e * TP(x[src_e], Y(r_e))`` with a pluggable TP.

Kinds (``tp=``), all with *path-weight sharing*: one weight ``w_e[c]`` per edge and channel multiplies every
path of the product, so the product itself is a fixed tensor. All three keep only the parity-even paths
(``l1 + l2 + l3`` even): node features and harmonics have the natural parity ``(-1)^l``, and exactly these
paths commute with inversion, so the models are O(3)-invariant at any depth (the odd paths, e.g. the cross
product ``1 x 1 -> 1``, would put pseudotensors into the same channels):

* ``"tdn"``: the CP (TDN) factorisation of the even-path shared CG tensor (:func:`mlip_kernels.make_tp`
  kind ``"cp"``, ``parity="even"``). Equivariant up to the fit error of the factors
  (:attr:`EdgeConvolution.rel_error`; ~1e-14 for the default ranks 6, 18, 52, 119, 245, 540 at L = 1..6, see
  ``mlip_kernels/CP_RANKS.md``).
* ``"gaunt"``: the exact Gaunt product on a sphere quadrature (even paths by construction; per-path
  factors differ from CG, so it is a different function from ``"tdn"``/``"cg"``).
* ``"cg"``: the exact even-path shared CG tensor applied densely to every edge, then scattered: the
  baseline. It is the same function as ``"tdn"`` (to the CP error); only the way it is computed differs.

``"tdn"`` and ``"gaunt"`` use the rank-space fast path (:func:`mlip_kernels.message.rank_space_conv`): the
node features are projected once per node (``x @ A``), each edge multiplies by ``Y_e @ B`` and ``w_e`` in
rank space and is scattered to its receiver, and the back projection ``@ C`` is applied once per node.

Scalar ends (``lmax_in=0`` or ``lmax_out=0``): the first block of a model sees only scalars and the last
one is read out only through its scalars, so their products are the slices ``M[0, :, :]`` and
``M[:, :, 0]`` of the tensor. A slice has the exact low-rank form ``A = 1, B = M[0], C = I`` (rank
``d_out``) or ``A = I, B = M[:, :, 0]^T, C = 1`` (rank ``d_in``) for any tensor ``M``, so every kind uses it
there, with the kind's own exact tensor: rank ``(L+1)^2`` instead of the CP rank or the grid size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mlip_kernels.cg import shared_cg_tensor
from mlip_kernels.message import rank_space_conv
from mlip_kernels.scatter import MessageGraph, scatter_sum
from mlip_kernels.tp import make_tp

__all__ = ["EdgeConvolution", "TP_KINDS"]

TP_KINDS = ("tdn", "gaunt", "cg")

#: Paths of the tensor products: only ``l1 + l2 + l3`` even (module docstring).
PARITY = "even"


def _dense_tensor(tp: str, lmax: int, gaunt_grid: str) -> np.ndarray:
    """The exact product tensor of a kind, ``(d, d, d)`` float64 (CG even paths, or Gaunt)."""
    if tp == "gaunt":
        return make_tp("gaunt", lmax, grid=gaunt_grid, dtype=torch.float64).dense().numpy()
    return shared_cg_tensor(lmax, lmax, lmax, PARITY)


def _slice_factors(M: np.ndarray, d_in: int, d_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact low-rank factors of ``M[:d_in, :, :d_out]`` when ``d_in == 1`` or ``d_out == 1`` (docstring)."""
    if d_in == 1:  # out[k] = x_0 sum_j Y_j M[0, j, k]: rank index = output index
        return np.ones((1, d_out)), M[0, :, :d_out].copy(), np.eye(d_out)
    # d_out == 1: out[0] = sum_i x_i (sum_j Y_j M[i, j, 0]): rank index = input index
    return np.eye(d_in), M[:d_in, :, 0].T.copy(), np.ones((d_in, 1))


class EdgeConvolution(nn.Module):
    """Sum over incoming edges of the channel-wise product of sender features with ``Y(r_e)``.

    Args:
        tp: ``"tdn"``, ``"gaunt"`` or ``"cg"`` (module docstring).
        lmax: degree ``L`` of the edge harmonics (and of the node features unless a scalar end says otherwise).
        cp_rank: CP rank for ``"tdn"`` (None: :func:`mlip_kernels.cp.default_rank` of the even tensor).
        gaunt_grid: quadrature for ``"gaunt"`` (``"auto"``, ``"lebedev"``, ``"gl"``).
        backend: rank-space message backend (:mod:`mlip_kernels.message`); never changes the numbers.
        lmax_in, lmax_out: degree of the input / output features, ``L`` (default) or 0 (a scalar end:
            module docstring).

    Shapes:
        x ``[N, C, d_in]``, Y ``[E, d]``, w ``[E, C]`` -> ``[N, C, d_out]``, ``d = (L+1)^2``,
        ``d_in = (lmax_in+1)^2``, ``d_out = (lmax_out+1)^2``.
    """

    def __init__(
        self,
        tp: str,
        lmax: int,
        cp_rank: int | None = None,
        gaunt_grid: str = "auto",
        backend: str = "auto",
        lmax_in: int | None = None,
        lmax_out: int | None = None,
    ):
        super().__init__()
        if tp not in TP_KINDS:
            raise ValueError(f"unknown tensor product {tp!r}; expected one of {TP_KINDS}")
        lmax = int(lmax)
        lmax_in = lmax if lmax_in is None else int(lmax_in)
        lmax_out = lmax if lmax_out is None else int(lmax_out)
        if lmax_in not in (0, lmax) or lmax_out not in (0, lmax):
            raise ValueError(f"lmax_in and lmax_out must be 0 or lmax={lmax}, got {lmax_in} and {lmax_out}")
        self.kind, self.lmax, self.backend = tp, lmax, backend
        self.lmax_in, self.lmax_out = lmax_in, lmax_out
        d, d_in, d_out = (lmax + 1) ** 2, (lmax_in + 1) ** 2, (lmax_out + 1) ** 2
        self.rel_error = 0.0
        self.dense = tp == "cg"
        # Constants are built in float64; the model's .to(dtype) casts them.
        if self.dense:
            # M[i, j, k]: out_k = sum_ij M[i,j,k] x_i Y_j.
            M = shared_cg_tensor(lmax, lmax, lmax, PARITY)[:d_in, :, :d_out]
            self.register_buffer("cg_tensor", torch.from_numpy(M.copy()))
            return
        if d_in == d_out == d and lmax > 0:
            kind = "cp" if tp == "tdn" else "gaunt"
            opts = {"rank": cp_rank, "parity": PARITY} if tp == "tdn" else {"grid": gaunt_grid}
            lowrank = make_tp(kind, lmax, dtype=torch.float64, **opts)
            A, B, C = lowrank.A, lowrank.B, lowrank.C
            self.rel_error = lowrank.rel_error
        else:
            A, B, C = (torch.from_numpy(f) for f in _slice_factors(_dense_tensor(tp, lmax, gaunt_grid), d_in, d_out))
        for name, f in (("A", A), ("B", B), ("C", C)):
            self.register_buffer(name, f.to(torch.float64).contiguous())

    @property
    def rank(self) -> int | None:
        """Rank ``R`` of the low-rank product (None for the dense ``"cg"``)."""
        return None if self.dense else self.A.shape[1]

    def forward(self, x: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, graph: MessageGraph) -> torch.Tensor:
        if not self.dense:
            return rank_space_conv(
                x, self.A, Y, self.B, w, graph.src, graph.dst, self.C, graph.n_dst, self.backend, graph=graph
            )
        # Dense per edge: fold Y into M first (E d^3), then one [C, d_in] @ [d_in, d_out] per edge.
        K = torch.einsum("ej,ijk->eik", Y, self.cg_tensor)
        xs = x.index_select(0, graph.src)
        if K.shape[1] == 1:  # scalar in: an outer product (bmm on 1-wide matrices: whole step 1.2-1.4x slower)
            m = xs * K
        elif K.shape[2] == 1:  # scalar out: a dot product per edge and channel
            m = (xs * K.transpose(1, 2)).sum(2, keepdim=True)
        else:
            m = torch.bmm(xs, K)
        return scatter_sum(m * w[:, :, None], graph.dst, graph.n_dst)

    def extra_repr(self) -> str:
        return (
            f"tp={self.kind!r}, lmax={self.lmax}, lmax_in={self.lmax_in}, lmax_out={self.lmax_out}, "
            f"rank={self.rank}, backend={self.backend!r}"
        )
