"""One interface for the three tensor products: all are low-rank, ``out = C^T ((A^T x) * (B^T y))``.

Kinds (``make_tp(kind, L_in1, L_in2, L_out)``):

* ``"cg"``: exact Clebsch-Gordan product over all paths of both parities (``parity="even"``: only the
  ``l1+l2+l3`` even ones), factors from :func:`mlip_kernels.cg.cg_factors` (one rank component per
  ``(path, m1, m2)``, so per-path weights are supported). Reference: :func:`mlip_kernels.cg.cg_tensor_product`.
* ``"gaunt"``: exact Gaunt product (``l1+l2+l3`` even paths only, symmetric in ``x, y``) through a
  quadrature exact for degree ``L_in1 + L_in2 + L_out`` (:mod:`mlip_kernels.grid`).
* ``"cp"``: CP decomposition of the path-weight-shared CG tensor (:mod:`mlip_kernels.cp`), all paths or
  (``parity="even"``) the even ones; equivariant up to the fit error documented in CP_RANKS.md (the
  default ranks are exact to ~1e-13 in float64).

Weights: ``weights`` broadcastable to ``[..., C]`` is one scalar per channel shared by all paths (e.g. the
radial weight of an edge); it multiplies in rank space, which is where the fused message kernel applies
it. ``path_weights`` ``[..., C, P]`` (per path) exist only for ``"cg"``. Everything is plain torch:
autograd gives backward and double backward.
"""

from __future__ import annotations

import numpy as np
import torch

from .cg import cg_factors, tp_paths
from .cp import cp_factors, default_rank
from .grid import gaunt_factors, sphere_grid

__all__ = ["lowrank_product", "LowRankTP", "make_tp", "gaunt_rank"]


def lowrank_product(
    x: torch.Tensor,
    y: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Low-rank tensor product ``out = ((x @ A) * (y @ B) [* weights]) @ C``.

    Shapes:
        x ``[..., C, d1]``, y ``[..., C or 1, d2]``, A ``(d1, R)``, B ``(d2, R)``, C ``(R, d3)``,
        weights broadcastable to ``[..., C, R]`` -> ``[..., C, d3]``.
    """
    z = (x @ A) * (y @ B)
    if weights is not None:
        z = z * weights
    return z @ C


class LowRankTP(torch.nn.Module):
    """A tensor product given by its low-rank factors (buffers, saved in the state dict).

    Attributes:
        kind: ``"cg"``, ``"gaunt"`` or ``"cp"``.
        L_in1, L_in2, L_out: degrees of x, y and the output.
        paths: the ``(l1, l2, l3)`` paths the product contains.
        rank: ``R``.
        rel_error: relative Frobenius error of the factors against the exact tensor (0 for cg, gaunt).

    Shapes:
        A ``(d1, R)``, B ``(d2, R)``, C ``(R, d3)``, path_index ``(R,)`` (cg only).
    """

    def __init__(
        self,
        A,
        B,
        C,
        *,
        kind: str,
        L_in1: int,
        L_in2: int,
        L_out: int,
        paths: list[tuple[int, int, int]],
        path_index=None,
        rel_error: float = 0.0,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        for name, val in (("A", A), ("B", B), ("C", C)):
            self.register_buffer(name, torch.as_tensor(np.asarray(val), dtype=torch.float64).to(dtype).to(device))
        if not (self.A.shape[1] == self.B.shape[1] == self.C.shape[0]):
            shapes = tuple(tuple(t.shape) for t in (self.A, self.B, self.C))
            raise ValueError(f"rank mismatch: A, B, C have shapes {shapes}")
        if path_index is not None:
            self.register_buffer("path_index", torch.as_tensor(np.asarray(path_index), dtype=torch.long).to(device))
        else:
            self.path_index = None
        self.kind, self.L_in1, self.L_in2, self.L_out = kind, L_in1, L_in2, L_out
        self.paths = list(paths)
        self.rel_error = float(rel_error)

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    @property
    def parity_odd_paths_present(self) -> bool:
        """Whether paths with ``l1+l2+l3`` odd (e.g. the cross product ``1 x 1 -> 1``) are included."""
        return any((l1 + l2 + l3) % 2 for l1, l2, l3 in self.paths)

    def dense(self) -> torch.Tensor:
        """The full product tensor ``T[i, j, k] = sum_r A[i,r] B[j,r] C[r,k]``. Shapes: ``(d1, d2, d3)``."""
        return torch.einsum("ir,jr,rk->ijk", self.A, self.B, self.C)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor | None = None,
        path_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the product.

        Args:
            x: first input.
            y: second input (e.g. edge spherical harmonics with a channel axis of size 1).
            weights: one weight per channel shared by all paths (or None).
            path_weights: per-path weights, kind ``"cg"`` only (or None).

        Shapes:
            x ``[..., C, d1]``, y ``[..., C or 1, d2]``, weights broadcastable to ``[..., C]``,
            path_weights broadcastable to ``[..., C, P]`` -> ``[..., C, d3]``.
        """
        w = None if weights is None else weights[..., None]
        if path_weights is not None:
            if self.path_index is None:
                raise ValueError(f"path_weights need a per-path factorisation; kind {self.kind!r} shares one weight")
            if path_weights.shape[-1] != len(self.paths):
                raise ValueError(f"path_weights has {path_weights.shape[-1]} paths, expected {len(self.paths)}")
            pw = path_weights.index_select(-1, self.path_index)  # [..., C, R]
            w = pw if w is None else w * pw
        return lowrank_product(x, y, self.A, self.B, self.C, w)

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, L_in1={self.L_in1}, L_in2={self.L_in2}, L_out={self.L_out}, rank={self.rank}, "
            f"paths={len(self.paths)}, rel_error={self.rel_error:.1e}"
        )


def make_tp(
    kind: str,
    L_in1: int,
    L_in2: int | None = None,
    L_out: int | None = None,
    rank: int | None = None,
    *,
    grid: str = "auto",
    parity: str = "all",
    dtype: torch.dtype | None = None,
    device=None,
) -> LowRankTP:
    """Build a tensor product ``"cg" | "gaunt" | "cp"`` (``L_in2``, ``L_out`` default to ``L_in1``).

    Args:
        rank: CP rank (``"cp"`` only; default :func:`mlip_kernels.cp.default_rank` for the parity).
        grid: quadrature for ``"gaunt"``: ``"gl"``, ``"lebedev"`` or ``"auto"`` (the smaller exact one).
        parity: ``"all"`` paths or only the ``"even"`` ones (``"cg"``, ``"cp"``); Gaunt coefficients vanish
            on odd paths, so ``"gaunt"`` is even either way.
        dtype: dtype of the factors (default: torch's default dtype); constants are built in float64.
    """
    if parity not in ("all", "even"):
        raise ValueError(f"parity must be 'all' or 'even', got {parity!r}")
    L_in2 = L_in1 if L_in2 is None else L_in2
    L_out = L_in1 if L_out is None else L_out
    common = dict(L_in1=L_in1, L_in2=L_in2, L_out=L_out, dtype=dtype, device=device)
    if kind == "cg":
        if rank is not None:
            raise ValueError("kind 'cg' is exact; its rank is fixed by the paths (pass rank=None)")
        A, B, C, pidx = cg_factors(L_in1, L_in2, L_out, parity)
        return LowRankTP(A, B, C, kind=kind, paths=tp_paths(L_in1, L_in2, L_out, parity), path_index=pidx, **common)
    if kind == "gaunt":
        if rank is not None:
            raise ValueError("kind 'gaunt' is exact; its rank is the grid size (choose grid=, not rank=)")
        A, B, C = gaunt_factors(L_in1, L_in2, L_out, grid=grid)
        return LowRankTP(A, B, C, kind=kind, paths=tp_paths(L_in1, L_in2, L_out, parity="even"), **common)
    if kind == "cp":
        if not L_in1 == L_in2 == L_out:
            raise ValueError(f"kind 'cp' is fitted for L_in1 = L_in2 = L_out; got {L_in1}, {L_in2}, {L_out}")
        rank = default_rank(L_in1, parity) if rank is None else rank
        A, B, C, err = cp_factors(L_in1, rank, parity)
        return LowRankTP(A, B, C, kind=kind, paths=tp_paths(L_in1, L_in1, L_in1, parity), rel_error=err, **common)
    raise ValueError(f"unknown tensor product kind {kind!r}; expected 'cg', 'gaunt' or 'cp'")


def gaunt_rank(L_in1: int, L_in2: int, L_out: int, grid: str = "auto") -> int:
    """Number of quadrature points (the rank) of the Gaunt product."""
    return len(sphere_grid(L_in1 + L_in2 + L_out, grid)[1])
