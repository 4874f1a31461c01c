"""Exact Clebsch-Gordan tensor product: paths, dense reference, exact low-rank factors.

A *path* ``(l1, l2, l3)`` couples degree ``l1`` of ``x`` and ``l2`` of ``y`` into degree ``l3`` of the output
with the real CG block ``clebsch_gordan(l1, l2, l3) = sqrt(2 l3 + 1) * wigner_3j`` (orthonormal coupling,
so component-normalised in, component-normalised out). All paths with ``|l1-l2| <= l3 <= l1+l2`` and
``l3 <= Lout`` are used, of both parities: ``l1+l2+l3`` odd paths (``1 x 1 -> 1`` is the cross product,
``out = (a x b) / sqrt2`` for vectors ``a``, ``b``) change sign under inversion relative to the even ones.

With one weight shared by all paths the whole product is one constant tensor
``M[i, j, k] = sum_paths CG blocks`` (:func:`shared_cg_tensor`), the target of the CP fit. With
``parity="even"`` only the ``l1+l2+l3`` even paths enter: for inputs and output of the natural parity
``(-1)^l`` (node features built from harmonics) those are exactly the paths that commute with inversion,
so the product is O(3)-, not only SO(3)-, equivariant. This is what the models use.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .wigner import clebsch_gordan

__all__ = ["tp_paths", "shared_cg_tensor", "cg_factors", "cg_tensor_product"]


def tp_paths(L1: int, L2: int, Lout: int, parity: str = "all") -> list[tuple[int, int, int]]:
    """Paths ``(l1, l2, l3)`` in a fixed order (l1, then l2, then l3 ascending).

    Args:
        parity: ``"all"`` (CG, CP) or ``"even"`` (only ``l1+l2+l3`` even: the Gaunt paths).
    """
    if parity not in ("all", "even"):
        raise ValueError(f"parity must be 'all' or 'even', got {parity!r}")
    return [
        (l1, l2, l3)
        for l1 in range(L1 + 1)
        for l2 in range(L2 + 1)
        for l3 in range(abs(l1 - l2), min(l1 + l2, Lout) + 1)
        if parity == "all" or (l1 + l2 + l3) % 2 == 0
    ]


def _block(l1: int, l2: int, l3: int) -> np.ndarray:
    return clebsch_gordan(l1, l2, l3).numpy()


@functools.cache
def _shared_cg_np(L1: int, L2: int, Lout: int, parity: str) -> np.ndarray:
    M = np.zeros(((L1 + 1) ** 2, (L2 + 1) ** 2, (Lout + 1) ** 2))
    for l1, l2, l3 in tp_paths(L1, L2, Lout, parity):
        M[l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2] = _block(l1, l2, l3)
    M.setflags(write=False)
    return M


def shared_cg_tensor(L1: int, L2: int, Lout: int, parity: str = "all") -> np.ndarray:
    """Path-weight-shared CG tensor ``M`` (float64): ``out[k] = sum_ij M[i,j,k] x[i] y[j]``.

    Args:
        parity: ``"all"`` paths, or only the ``"even"`` ones (``l1+l2+l3`` even; see the module docstring).

    Shapes:
        returns ``(d1, d2, d3)``.
    """
    if parity not in ("all", "even"):
        raise ValueError(f"parity must be 'all' or 'even', got {parity!r}")
    return _shared_cg_np(L1, L2, Lout, parity).copy()


def cg_factors(
    L1: int, L2: int, Lout: int, parity: str = "all"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact low-rank factors of the CG product with one rank component per ``(path, m1, m2)``.

    ``A`` and ``B`` are one-hot selections of ``x[m1]`` and ``y[m2]``; row ``C[r]`` is the CG block row
    ``CG[m1, m2, :]`` placed in the output. Every component belongs to one path of
    ``tp_paths(L1, L2, Lout, parity)`` (``path_index[r]``), so per-path weights act in rank space. Pairs
    whose CG row is zero are dropped.

    Shapes:
        returns ``A (d1, R)``, ``B (d2, R)``, ``C (R, d3)``, ``path_index (R,)`` int64.
    """
    cols_a, cols_b, rows_c, pidx = [], [], [], []
    d3 = (Lout + 1) ** 2
    for p, (l1, l2, l3) in enumerate(tp_paths(L1, L2, Lout, parity)):
        blk = _block(l1, l2, l3)
        for m1 in range(2 * l1 + 1):
            for m2 in range(2 * l2 + 1):
                if not np.any(blk[m1, m2]):
                    continue
                row = np.zeros(d3)
                row[l3 * l3 : (l3 + 1) ** 2] = blk[m1, m2]
                cols_a.append(l1 * l1 + m1)
                cols_b.append(l2 * l2 + m2)
                rows_c.append(row)
                pidx.append(p)
    R = len(pidx)
    A = np.zeros(((L1 + 1) ** 2, R))
    B = np.zeros(((L2 + 1) ** 2, R))
    A[cols_a, np.arange(R)] = 1.0
    B[cols_b, np.arange(R)] = 1.0
    return A, B, np.stack(rows_c), np.asarray(pidx, dtype=np.int64)


def cg_tensor_product(
    x: torch.Tensor,
    y: torch.Tensor,
    L_in1: int,
    L_in2: int,
    L_out: int,
    path_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference CG tensor product by a dense einsum per path (slow and simple; the test oracle).

    ``out[..., c, l3] = sum_{paths} w_p[..., c] * CG_p[m1, m2, m3] x[..., c, l1 m1] y[..., c, l2 m2]``.

    Shapes:
        x ``[..., C, d1]``, y ``[..., C or 1, d2]``, path_weights broadcastable to ``[..., C, P]``
        (``P = len(tp_paths(L_in1, L_in2, L_out))``) -> ``[..., C, d3]``.
    """
    paths = tp_paths(L_in1, L_in2, L_out)
    if x.shape[-1] != (L_in1 + 1) ** 2 or y.shape[-1] != (L_in2 + 1) ** 2:
        raise ValueError(f"irreps dims {x.shape[-1]}, {y.shape[-1]} do not match L_in1={L_in1}, L_in2={L_in2}")
    batch = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    out = x.new_zeros(*batch, (L_out + 1) ** 2)
    for p, (l1, l2, l3) in enumerate(paths):
        cg = clebsch_gordan(l1, l2, l3, dtype=x.dtype, device=x.device)
        xs = x[..., l1 * l1 : (l1 + 1) ** 2]
        ys = y[..., l2 * l2 : (l2 + 1) ** 2]
        outer = (xs[..., :, None] * ys[..., None, :]).flatten(-2)  # [..., C, (2l1+1)(2l2+1)]
        term = outer @ cg.reshape(-1, 2 * l3 + 1)
        if path_weights is not None:
            term = term * path_weights[..., p : p + 1]
        out[..., l3 * l3 : (l3 + 1) ** 2] += term
    return out
