"""CP (TDN) decomposition of the path-weight-shared CG tensor: fit, ship, load.

``M[i, j, k] ~ sum_r A[i, r] B[j, r] C[r, k]`` where ``M = shared_cg_tensor(L, L, L, parity)`` (CG blocks
``sqrt(2l3+1) * wigner_3j``; ``parity="all"``: every path, ``"even"``: only ``l1+l2+l3`` even, the
O(3)-equivariant product the ``"tdn"`` models use). Factors for the default ranks are shipped as package
data ``data/cp_L{L}_R{R}.npz`` (all paths) and ``data/cp_even_L{L}_R{R}.npz`` (float64, written by
``python -m mlip_kernels.fit_cp``); any other ``(L, rank, parity)`` is fitted on demand by the same
deterministic procedure and kept in memory.

The even-path tensor has a much lower exact rank (6, 19, 52, 120, 260, 540 at L = 1..6 against 8, 30, 90,
220, 450, 850; table in CP_RANKS.md), so dropping the odd paths both fixes parity and makes the product cheaper.

Fit (:func:`fit_cp`): seeded restarts of alternating least squares with a Tikhonov term that decays
geometrically (steers ALS away from degenerate "swamp" solutions early, vanishes later), column
balancing and flushing of denormal-bound entries; then Levenberg-Marquardt with a matrix-free
preconditioned CG inner solve on the best restart. ALS alone stalls at 1e-3..1e-2 near the exact rank;
LM reaches 1e-13 in seconds (L <= 4). Deterministic for a given machine/BLAS (seeds fixed).

Measured (float64): relative Frobenius error of M and equivariance error
``||tp(Dx, Dy) - D tp(x, y)|| / ||tp(x, y)||`` (256 random rotations and inputs); the full scan with fit
times is CP_RANKS.md. Even paths::

    L  rank   rel. error  equiv. error
    1     5   9.8e-04     1.3e-03
    1     6   6.1e-16     5.8e-16  default (exact)
    2    18   1.1e-02     1.1e-02
    2    19   2.5e-16     7.7e-16  default (exact)
    3    50   1.1e-03     1.6e-03
    3    52   7.9e-14     1.1e-13  default (exact)
    4   120   9.8e-14     1.4e-13  default (exact; 110 stalls at 1.5e-3)
    5   260   1.6e-14     2.2e-14  default (exact)
    6   540   8.0e-14     1.1e-13  default (exact; 500 stalls at 8e-9)

All paths::

    L  rank   rel. error  equiv. error
    1     7   1.5e-02     1.5e-02  7 L^2
    1     8   9.0e-16     1.4e-15  default (exact)
    2    28   1.5e-02     2.0e-02  7 L^2
    2    30   5.2e-14     7.1e-14  default (exact)
    3    63   5.3e-02     7.0e-02  7 L^2
    3    90   8.5e-14     1.2e-13  default (exact)
    4   112   5.3e-02     7.1e-02  7 L^2
    4   220   2.0e-14     2.8e-14  default (exact)
    5   175   5.4e-02     7.1e-02  7 L^2
    5   450   1.8e-14     2.5e-14  default (exact)
    6   252   5.3e-02     6.8e-02  7 L^2
    6   850   1.0e-14     1.5e-14  default (exact)

All paths, exact ranks found (error ~1e-13): 8, 30, 90, 220 (215 also converges, slowly), 450, 850 at L = 1..6;
a little below them the fits stall at 1e-5..1e-2, so these are upper bounds on the CP rank of M, lower
than the 8, 35, 100, 250 reported elsewhere for L = 1..4. Rank 7 L^2 (the TDN default) leaves 2-7%
equivariance error. The defaults are the exact ranks: equivariant to rounding in float64 (float32: 2-5e-7
relative error against the float64 CG product for L = 1..6, the cg kind itself 0.5-1.3e-7).
"""

from __future__ import annotations

import functools
import math
import warnings
from importlib import resources

import numpy as np
import torch

from .cg import shared_cg_tensor

__all__ = ["DEFAULT_RANKS", "EVEN_DEFAULT_RANKS", "default_rank", "fit_cp", "cp_factors", "cp_relative_error",
           "equivariance_error"]

#: Default rank per L (L_in1 = L_in2 = L_out = L) of the all-path tensor: the smallest rank at which the
#: fitter reaches an exact decomposition (relative error ~1e-13, so equivariant to rounding), see
#: CP_RANKS.md. Shipped as package data.
DEFAULT_RANKS: dict[int, int] = {1: 8, 2: 30, 3: 90, 4: 220, 5: 450, 6: 850}

#: The same for the even-path tensor (``parity="even"``, what the ``"tdn"`` models use).
EVEN_DEFAULT_RANKS: dict[int, int] = {1: 6, 2: 19, 3: 52, 4: 120, 5: 260, 6: 540}

PARITIES = ("all", "even")


def _defaults(parity: str) -> dict[int, int]:
    if parity not in PARITIES:
        raise ValueError(f"parity must be 'all' or 'even', got {parity!r}")
    return DEFAULT_RANKS if parity == "all" else EVEN_DEFAULT_RANKS


def default_rank(L: int, parity: str = "all") -> int:
    """Default CP rank for ``L`` and the ``"all"``- or ``"even"``-path tensor.

    Raises:
        ValueError: for ``L`` without a measured default (fitting larger L takes long; pass ``rank=``
            explicitly, or use the exact ``"gaunt"`` / ``"cg"`` products).
    """
    defaults = _defaults(parity)
    if L not in defaults:
        raise ValueError(
            f"no default CP rank for L={L} with {parity} paths (measured for L in {sorted(defaults)}); pass "
            "rank= explicitly (see CP_RANKS.md; fitting it on demand can take minutes) or use kind 'gaunt' or 'cg'"
        )
    return defaults[L]


def cp_relative_error(M: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray) -> float:
    """``||M - [[A, B, C]]||_F / ||M||_F``. Shapes: M ``(d1,d2,d3)``, A ``(d1,R)``, B ``(d2,R)``, C ``(R,d3)``."""
    approx = np.einsum("ir,jr,rk->ijk", A, B, C, optimize=True)
    return float(np.linalg.norm(approx - M) / np.linalg.norm(M))


def _als(M: np.ndarray, A, B, C, iters: int, lam0: float, tol: float, it0: int = 0):
    """In-place ALS sweeps on factors ``A (d1,R)``, ``B (d2,R)``, ``Ct (d3,R)``; returns the rel. error."""
    d1, d2, d3 = M.shape
    R = A.shape[1]
    eye = np.eye(R)
    M_ij_k = M.reshape(d1 * d2, d3)
    M_i_jk = M.reshape(d1, d2 * d3)
    err = math.inf
    for it in range(it0, it0 + iters):
        lam = lam0 * 0.5 ** (it / 50) + 1e-13
        T = (M_ij_k @ C).reshape(d1, d2, R)  # contraction with C is shared by the A and B updates
        A[:] = np.einsum("ijr,jr->ir", T, B) @ np.linalg.inv((B.T @ B) * (C.T @ C) + lam * eye)
        B[:] = np.einsum("ijr,ir->jr", T, A) @ np.linalg.inv((A.T @ A) * (C.T @ C) + lam * eye)
        T2 = (M_i_jk.T @ A).reshape(d2, d3, R)
        C[:] = np.einsum("jkr,jr->kr", T2, B) @ np.linalg.inv((A.T @ A) * (B.T @ B) + lam * eye)
        # balance column norms (the CP scaling ambiguity) and flush denormal-bound entries
        na, nb, nc = (np.linalg.norm(X, axis=0) + 1e-300 for X in (A, B, C))
        s = np.cbrt(na * nb * nc)
        A *= s / na
        B *= s / nb
        C *= s / nc
        for X in (A, B, C):
            X[np.abs(X) < 1e-100] = 0.0
        if (it + 1) % 100 == 0 or it == it0 + iters - 1:
            err = cp_relative_error(M, A, B, C.T)
            if err < tol:
                break
    return err


def _full(A, B, C):
    return np.einsum("ir,jr,kr->ijk", A, B, C, optimize=True)


def _mttkrp(T, A, B, C):
    """``J^T T`` for CP: the three matricised-tensor-times-Khatri-Rao products."""
    d1, d2, d3 = T.shape
    R = A.shape[1]
    TC = (T.reshape(d1 * d2, d3) @ C).reshape(d1, d2, R)
    TA = (T.reshape(d1, d2 * d3).T @ A).reshape(d2, d3, R)
    return np.einsum("ijr,jr->ir", TC, B), np.einsum("ijr,ir->jr", TC, A), np.einsum("jkr,jr->kr", TA, B)


def _lm(M, A, B, C, iters: int, tol: float, lam: float = 1e-2, cg_iters: int = 200, cg_tol: float = 1e-6):
    """Levenberg-Marquardt (damped Gauss-Newton) with a matrix-free preconditioned CG inner solve.

    ``J^T J`` of a CP model needs only the ``R x R`` Gram matrices, so one inner step is ``O(d R^2)``;
    near an exact decomposition this converges quadratically where ALS crawls (it reaches 1e-13 at
    ranks where ALS stalls at 1e-3).
    """
    nM = np.linalg.norm(M)
    F = _full(A, B, C) - M
    f = 0.5 * np.sum(F * F)
    eye = np.eye(A.shape[1])

    def dot(u, v):
        return sum(float(np.sum(a * b)) for a, b in zip(u, v))

    for _ in range(iters):
        if math.sqrt(2 * f) / nM < tol:
            break
        GA, GB, GC = A.T @ A, B.T @ B, C.T @ C
        g = _mttkrp(F, A, B, C)

        def jtj(v, GA=GA, GB=GB, GC=GC):
            a, b, c = v[0].T @ A, v[1].T @ B, v[2].T @ C
            return (
                v[0] @ (GB * GC) + A @ (b * GC) + A @ (GB * c) + lam * v[0],
                v[1] @ (GA * GC) + B @ (a * GC) + B @ (GA * c) + lam * v[1],
                v[2] @ (GA * GB) + C @ (a * GB) + C @ (GA * b) + lam * v[2],
            )

        P = [np.linalg.inv(G + lam * eye) for G in (GB * GC, GA * GC, GA * GB)]  # block-Jacobi (ALS) blocks
        x = [np.zeros_like(A), np.zeros_like(B), np.zeros_like(C)]
        r = [-gi for gi in g]
        z = [ri @ Pi for ri, Pi in zip(r, P)]
        p, rz = [zi.copy() for zi in z], dot(r, z)
        r0 = math.sqrt(dot(r, r))
        for _k in range(cg_iters):
            Ap = jtj(p)
            alpha = rz / dot(p, Ap)
            x = [xi + alpha * pi for xi, pi in zip(x, p)]
            r = [ri - alpha * api for ri, api in zip(r, Ap)]
            if math.sqrt(dot(r, r)) < cg_tol * r0:
                break
            z = [ri @ Pi for ri, Pi in zip(r, P)]
            rz_new = dot(r, z)
            p = [zi + (rz_new / rz) * pi for zi, pi in zip(z, p)]
            rz = rz_new
        An, Bn, Cn = A + x[0], B + x[1], C + x[2]
        Fn = _full(An, Bn, Cn) - M
        fn = 0.5 * np.sum(Fn * Fn)
        pred = -(dot(g, x) + 0.5 * (dot(x, jtj(x)) - lam * dot(x, x)))
        if fn < f:  # accept; adapt the damping by the gain ratio (Nielsen's rule)
            rho = (f - fn) / max(pred, 1e-300)
            A, B, C, F, f = An, Bn, Cn, Fn, fn
            lam *= max(1 / 3, 1 - (2 * rho - 1) ** 3)
        else:
            lam *= 4
    return A, B, C, math.sqrt(2 * f) / nM


def fit_cp(
    M: np.ndarray,
    rank: int,
    *,
    seed: int = 0,
    restarts: int = 3,
    warmup_iters: int = 300,
    iters: int = 500,
    lam0: float = 1e-3,
    tol: float = 1e-13,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Deterministic CP fit of a 3-tensor: seeded ALS restarts, then Levenberg-Marquardt on the best.

    Each restart ``s`` starts from ``default_rng(seed + s)`` Gaussian factors and runs ``warmup_iters``
    regularised ALS sweeps; the best one is refined by up to ``iters`` LM steps (stops below ``tol``).

    Shapes:
        M ``(d1, d2, d3)`` -> ``A (d1, R)``, ``B (d2, R)``, ``C (R, d3)`` and the relative error.
    """
    M = np.asarray(M, dtype=np.float64)
    best = None
    for s in range(restarts):
        rng = np.random.default_rng(seed + s)
        A, B, C = (rng.standard_normal((n, rank)) for n in M.shape)
        err = _als(M, A, B, C, warmup_iters, lam0, tol)
        if best is None or err < best[0]:
            best = (err, A, B, C)
        if err < tol:
            break
    err, A, B, C = best
    if err >= tol and iters > 0:
        A, B, C, err = _lm(M, A, B, C, iters, tol)
    # balance the scaling ambiguity so that no factor carries the magnitude alone
    na, nb, nc = (np.linalg.norm(X, axis=0) + 1e-300 for X in (A, B, C))
    s = np.cbrt(na * nb * nc)
    return A * (s / na), B * (s / nb), (C * (s / nc)).T.copy(), float(err)


def _data_name(L: int, rank: int, parity: str = "all") -> str:
    return f"cp_L{L}_R{rank}.npz" if parity == "all" else f"cp_{parity}_L{L}_R{rank}.npz"


@functools.lru_cache(maxsize=None)
def _load_or_fit(L: int, rank: int, parity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    ref = resources.files("mlip_kernels").joinpath("data", _data_name(L, rank, parity))
    if ref.is_file():
        with resources.as_file(ref) as path, np.load(path) as z:
            out = (z["A"], z["B"], z["C"], float(z["rel_error"]))
    else:
        if L >= 3:  # L <= 2 fits in about a second; larger ones take tens of seconds to minutes
            warnings.warn(
                f"CP factors for L={L}, rank={rank} ({parity} paths) are not shipped; fitting them now (may take "
                "minutes). Ship them with `python -m mlip_kernels.fit_cp`.",
                stacklevel=3,
            )
        out = fit_cp(shared_cg_tensor(L, L, L, parity), rank)
    for a in out[:3]:
        a.setflags(write=False)
    return out


def cp_factors(L: int, rank: int | None = None,
               parity: str = "all") -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """CP factors of ``shared_cg_tensor(L, L, L, parity)``: shipped if available, else fitted (deterministic).

    Shapes:
        returns ``A (d, R)``, ``B (d, R)``, ``C (R, d)`` (float64 copies) and the relative error of M.
    """
    _defaults(parity)
    rank = default_rank(L, parity) if rank is None else int(rank)
    A, B, C, err = _load_or_fit(int(L), rank, parity)
    return A.copy(), B.copy(), C.copy(), err


def equivariance_error(tp, L_in1: int, L_in2: int, L_out: int, n: int = 64, seed: int = 0) -> float:
    """Relative equivariance error ``||tp(Dx, Dy) - D tp(x, y)|| / ||tp(x, y)||`` in float64.

    ``tp(x, y)`` is any callable on ``[n, 1, d]`` tensors; ``n`` random rotations and inputs.
    """
    from .wigner import random_rotation, wigner_D_blocks

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, (L_in1 + 1) ** 2, dtype=torch.float64, generator=g)
    y = torch.randn(n, 1, (L_in2 + 1) ** 2, dtype=torch.float64, generator=g)
    R = random_rotation(n, generator=g)
    Lmax = max(L_in1, L_in2, L_out)
    D = wigner_D_blocks(Lmax, R)[:, None]  # [n, 1, d, d]

    def rot(f, L):
        d = (L + 1) ** 2
        return (D[..., :d, :d] @ f[..., None])[..., 0]

    out = tp(x, y)
    out_rot = tp(rot(x, L_in1), rot(y, L_in2))
    return float((out_rot - rot(out, L_out)).norm() / out.norm())
