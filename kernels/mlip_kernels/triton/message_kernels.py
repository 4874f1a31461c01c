"""Fused Triton kernels for the rank-space message and its two edge reductions.

* ``_message_kernel``: one program per (receiver, channel block, rank block). It walks the receiver's
  incoming edges in CSR order (edges sorted by ``dst`` once per graph), gathers ``P[src]`` tiles and
  accumulates ``P * u * w`` in registers, then writes the tile once: no atomics, deterministic, and the
  ``E x C x R`` message never exists in memory. Receivers with no edges get zeros.
* ``_contract_c_kernel`` (gradient w.r.t. ``u``) and ``_contract_r_kernel`` (w.r.t. ``w``): one program
  per (edge, output block), reducing over the other axis in a loop; every output is written once.

The gradient w.r.t. ``P`` is ``_message_kernel`` on the reversed graph (CSR by ``src``). Accumulation
is in float32 (float64 for float64 inputs, which the interpreter tests use for gradcheck).

Shapes (all kernels): P/X/Y ``[N, C, R]`` contiguous, u ``[E, R]``, w ``[E, C]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..scatter import MessageGraph

__all__ = ["TritonOps"]


@triton.jit
def _message_kernel(
    P, U, W, SRC, PERM, ROWPTR, OUT, C, R,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    mc = offs_c < C
    mr = offs_r < R
    tile = offs_c[:, None] * R + offs_r[None, :]
    m2 = mc[:, None] & mr[None, :]
    start = tl.load(ROWPTR + n)
    end = tl.load(ROWPTR + n + 1)
    acc = tl.zeros([BLOCK_C, BLOCK_R], dtype=ACC)
    for k in range(start, end):
        e = tl.load(PERM + k)
        s = tl.load(SRC + e)
        p = tl.load(P + s * C * R + tile, mask=m2, other=0.0).to(ACC)
        uu = tl.load(U + e * R + offs_r, mask=mr, other=0.0).to(ACC)
        ww = tl.load(W + e * C + offs_c, mask=mc, other=0.0).to(ACC)
        acc += p * uu[None, :] * ww[:, None]
    tl.store(OUT + n * C * R + tile, acc.to(OUT.dtype.element_ty), mask=m2)


@triton.jit
def _contract_c_kernel(
    X, Y, W, XIDX, YIDX, OUT, C, R,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    # out[e, r] = sum_c X[xi_e, c, r] * Y[yi_e, c, r] * W[e, c]
    e = tl.program_id(0).to(tl.int64)
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    mr = offs_r < R
    xi = tl.load(XIDX + e)
    yi = tl.load(YIDX + e)
    acc = tl.zeros([BLOCK_R], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C
        tile = offs_c[:, None] * R + offs_r[None, :]
        m2 = mc[:, None] & mr[None, :]
        x = tl.load(X + xi * C * R + tile, mask=m2, other=0.0).to(ACC)
        y = tl.load(Y + yi * C * R + tile, mask=m2, other=0.0).to(ACC)
        ww = tl.load(W + e * C + offs_c, mask=mc, other=0.0).to(ACC)
        acc += tl.sum(x * y * ww[:, None], axis=0)
    tl.store(OUT + e * R + offs_r, acc.to(OUT.dtype.element_ty), mask=mr)


@triton.jit
def _contract_r_kernel(
    X, Y, U, XIDX, YIDX, OUT, C, R,
    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    # out[e, c] = sum_r X[xi_e, c, r] * Y[yi_e, c, r] * U[e, r]
    e = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = offs_c < C
    xi = tl.load(XIDX + e)
    yi = tl.load(YIDX + e)
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mr = offs_r < R
        tile = offs_c[:, None] * R + offs_r[None, :]
        m2 = mc[:, None] & mr[None, :]
        x = tl.load(X + xi * C * R + tile, mask=m2, other=0.0).to(ACC)
        y = tl.load(Y + yi * C * R + tile, mask=m2, other=0.0).to(ACC)
        uu = tl.load(U + e * R + offs_r, mask=mr, other=0.0).to(ACC)
        acc += tl.sum(x * y * uu[None, :], axis=1)
    tl.store(OUT + e * C + offs_c, acc.to(OUT.dtype.element_ty), mask=mc)


def _acc_dtype(t: torch.Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


class TritonOps:
    """The Triton kernel set used by the autograd Functions of :mod:`mlip_kernels.message`.

    Args:
        block_c, block_r: tile sizes (powers of two); defaults ``min(32, C)`` and ``min(64, R)`` rounded
            up to powers of two. Tests pass small blocks to exercise the masked tails.
        poison: fill outputs with NaN before the launch (tests: an output a kernel fails to write shows).
    """

    name = "triton"

    def __init__(self, block_c: int | None = None, block_r: int | None = None, poison: bool = False):
        for b in (block_c, block_r):
            if b is not None and (b < 1 or b & (b - 1)):
                raise ValueError(f"Triton block sizes must be powers of two, got {b}")
        self.block_c, self.block_r, self.poison = block_c, block_r, poison

    def _empty(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        out = torch.empty(shape, dtype=like.dtype, device=like.device)
        return out.fill_(float("nan")) if self.poison else out

    def _blocks(self, C: int, R: int) -> tuple[int, int]:
        bc = self.block_c or min(32, triton.next_power_of_2(max(C, 1)))
        br = self.block_r or min(64, triton.next_power_of_2(max(R, 1)))
        return bc, br

    def message(self, P: torch.Tensor, u: torch.Tensor, w: torch.Tensor, g: MessageGraph) -> torch.Tensor:
        """Shapes: P ``[n_src, C, R]``, u ``[E, R]``, w ``[E, C]`` -> ``[n_dst, C, R]``."""
        _, C, R = P.shape
        out = self._empty((g.n_dst, C, R), P)
        if out.numel() == 0:
            return out
        perm, rowptr = g.csr()
        bc, br = self._blocks(C, R)
        grid = (g.n_dst, triton.cdiv(C, bc), triton.cdiv(R, br))
        _message_kernel[grid](P, u, w, g.src, perm, rowptr, out, C, R, BLOCK_C=bc, BLOCK_R=br, ACC=_acc_dtype(P))
        return out

    def contract_c(self, X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, g: MessageGraph) -> torch.Tensor:
        """``out[e,r] = sum_c X[dst_e,c,r] Y[src_e,c,r] w[e,c]``. Shapes: -> ``[E, R]``."""
        _, C, R = X.shape
        out = self._empty((g.num_edges, R), X)
        if out.numel() == 0:
            return out
        if C == 0:
            return out.zero_()
        bc, br = self._blocks(C, R)
        grid = (g.num_edges, triton.cdiv(R, br))
        _contract_c_kernel[grid](X, Y, w, g.dst, g.src, out, C, R, BLOCK_C=bc, BLOCK_R=br, ACC=_acc_dtype(X))
        return out

    def contract_r(self, X: torch.Tensor, Y: torch.Tensor, u: torch.Tensor, g: MessageGraph) -> torch.Tensor:
        """``out[e,c] = sum_r X[dst_e,c,r] Y[src_e,c,r] u[e,r]``. Shapes: -> ``[E, C]``."""
        _, C, R = X.shape
        out = self._empty((g.num_edges, C), X)
        if out.numel() == 0:
            return out
        if R == 0:
            return out.zero_()
        bc, br = self._blocks(C, R)
        grid = (g.num_edges, triton.cdiv(C, bc))
        _contract_r_kernel[grid](X, Y, u, g.dst, g.src, out, C, R, BLOCK_C=bc, BLOCK_R=br, ACC=_acc_dtype(X))
        return out

    def contract_both(self, X, Y, u, w, g: MessageGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """``(contract_c(X, Y, w), contract_r(X, Y, u))``. Shapes: -> ``[E, R]``, ``[E, C]``."""
        return self.contract_c(X, Y, w, g), self.contract_r(X, Y, u, g)
