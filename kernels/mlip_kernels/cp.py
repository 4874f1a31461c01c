"""CP (TDN) decomposition of the path-weight-shared CG tensor: fit, ship, load.

``M[i, j, k] ~ sum_r A[i, r] B[j, r] C[r, k]`` where ``M = shared_cg_tensor(L, L, L, parity)`` (CG blocks
``sqrt(2l3+1) * wigner_3j``; ``parity="all"``: every path, ``"even"``: only ``l1+l2+l3`` even, the
O(3)-equivariant product the ``"tdn"`` models use).

Ranks (:func:`cp_factors`; measurements and the commands that regenerate them in CP_RANKS.md):

* the default rank per ``L`` (:data:`DEFAULT_RANKS`, :data:`EVEN_DEFAULT_RANKS`) is the smallest rank at which
  the fitter found an exact decomposition (relative error <= :data:`EXACT_TOL`, bounded components), so the
  product is equivariant to rounding. Its factors ship as package data ``data/cp_L{L}_R{R}.npz`` (all paths)
  and ``data/cp_even_L{L}_R{R}.npz`` (float64, written by ``python -m mlip_kernels.fit_cp``). These ranks
  are upper bounds on the CP rank of M: just below them every start stalls at 1e-5..1e-2.
* any rank above the default is exact too: the shipped factors with components split (:func:`raise_rank`).
* a rank below the default is fitted on demand (deterministic, kept in memory) and is approximate, an
  accuracy-for-speed trade-off (the TDN paper's rank 7 L^2 is one for all paths at every L, and for even
  paths from L = 4): the fit error is returned and stated in a :class:`CPApproximationWarning`.

Fit (:func:`fit_cp`): independent seeded starts, each a short run of alternating least squares with a
decaying Tikhonov term (steers ALS away from degenerate "swamp" solutions early, vanishes later), column
balancing and flushing of denormal-bound entries, then Levenberg-Marquardt with a matrix-free
preconditioned CG inner solve until exact or stalled. ALS alone stalls at 1e-3..1e-2 near the exact rank,
and near the smallest exact rank most starts end in local minima, so starts are cheap and many: the first
exact one wins. Deterministic for a given machine/BLAS (seeds fixed).
"""

from __future__ import annotations

import functools
import math
import warnings
from importlib import resources

import numpy as np
import torch

from .cg import shared_cg_tensor

__all__ = [
    "DEFAULT_RANKS",
    "EVEN_DEFAULT_RANKS",
    "EXACT_TOL",
    "MAX_COLUMN_NORM",
    "CPApproximationWarning",
    "CPFitWarning",
    "column_norms",
    "cp_factors",
    "cp_relative_error",
    "default_rank",
    "equivariance_error",
    "fit_cp",
    "is_exact",
    "raise_rank",
]

#: Default rank per L (L_in1 = L_in2 = L_out = L) of the all-path tensor: the smallest rank at which the
#: fitter found an exact decomposition (:func:`is_exact`: equivariant to rounding), see CP_RANKS.md.
#: Shipped as package data.
DEFAULT_RANKS: dict[int, int] = {1: 8, 2: 30, 3: 90, 4: 215, 5: 450, 6: 850}

#: The same for the even-path tensor (``parity="even"``, what the ``"tdn"`` models use).
EVEN_DEFAULT_RANKS: dict[int, int] = {1: 6, 2: 18, 3: 52, 4: 119, 5: 245, 6: 540}

PARITIES = ("all", "even")

#: Relative Frobenius error at or below which a decomposition counts as exact (float64 rounding of the
#: factors gives 1e-16..1e-14; fits that are not exact stall at 1e-9 and above).
EXACT_TOL = 1e-13

#: Largest balanced component size (:func:`column_norms`) of a decomposition counted as exact.
MAX_COLUMN_NORM = 10.0


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
        A[:], B[:], C[:] = _balance(A, B, C)
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


def _balance(A, B, C):
    """Rescale each component so its three factor columns have equal norms (the CP scaling ambiguity)."""
    na, nb, nc = (np.linalg.norm(X, axis=0) + 1e-300 for X in (A, B, C))
    s = np.cbrt(na * nb * nc)
    return A * (s / na), B * (s / nb), C * (s / nc)


def column_norms(A: np.ndarray, B: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Balanced size ``cbrt(|a_r| |b_r| |c_r|)`` of each component. Shapes: A ``(d1,R)``, B ``(d2,R)``, C ``(R,d3)``.

    Exact fits have sizes about 1 (the shipped factors: at most 1.8); a fit that approaches the tensor only
    as a limit of diverging, cancelling components (a border-rank decomposition) has sizes of 50 and more,
    and loses accuracy to cancellation in finite precision.
    """
    return np.cbrt(np.linalg.norm(A, axis=0) * np.linalg.norm(B, axis=0) * np.linalg.norm(C, axis=1))


def is_exact(A: np.ndarray, B: np.ndarray, C: np.ndarray, rel_error: float) -> bool:
    """Whether a decomposition counts as exact: error <= :data:`EXACT_TOL` with bounded components."""
    return rel_error <= EXACT_TOL and float(column_norms(A, B, C).max(initial=0.0)) <= MAX_COLUMN_NORM


def _lm(
    M,
    A,
    B,
    C,
    iters: int,
    tol: float,
    lam: float = 1e-2,
    cg_iters: int = 200,
    cg_tol: float = 1e-6,
    stall_steps: int = 75,
    stall_above: float = 1e-9,
):
    """Levenberg-Marquardt (damped Gauss-Newton) with a matrix-free preconditioned CG inner solve.

    ``J^T J`` of a CP model needs only the ``R x R`` Gram matrices, so one inner step is ``O(d R^2)``;
    near an exact decomposition this converges quadratically where ALS crawls (it reaches 1e-13 at
    ranks where ALS stalls at 1e-3). Gives up early once stalled: the error, still above ``stall_above``,
    has not halved over the last ``stall_steps`` steps (a local minimum or a swamp; another start is cheaper).
    """
    nM = np.linalg.norm(M)
    F = _full(A, B, C) - M
    f = 0.5 * np.sum(F * F)
    eye = np.eye(A.shape[1])
    history = []

    def dot(u, v):
        return sum(float(np.sum(a * b)) for a, b in zip(u, v))

    for step in range(iters):
        err = math.sqrt(2 * f) / nM
        history.append(err)
        if err < tol:
            break
        if step >= stall_steps and err > stall_above and err > 0.5 * history[step - stall_steps]:
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


_POLISH_STEPS = 5


def fit_cp(
    M: np.ndarray,
    rank: int,
    *,
    seed: int = 0,
    restarts: int = 4,
    warmup_iters: int = 100,
    iters: int = 600,
    lam0: float = 1e-3,
    tol: float = EXACT_TOL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Deterministic CP fit of a 3-tensor: independent seeded starts, each ALS then Levenberg-Marquardt.

    Start ``s`` draws Gaussian factors from ``default_rng(seed + s)``, runs ``warmup_iters`` regularised
    ALS sweeps and then up to ``iters`` LM steps, abandoned early once stalled. The first start that is
    exact (:func:`is_exact` with ``tol``) ends the search; otherwise the most accurate of ``restarts``
    starts is returned. Near the smallest exact rank most starts stall in local minima (e.g. 3 of 10 at
    the even-path L = 2 rank 18), so restarts are what finds low exact ranks.

    Shapes:
        M ``(d1, d2, d3)`` -> ``A (d1, R)``, ``B (d2, R)``, ``C (R, d3)`` and the relative error.
    """
    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    M = np.asarray(M, dtype=np.float64)
    best = None
    for s in range(max(1, restarts)):
        rng = np.random.default_rng(seed + s)
        A, B, C = (rng.standard_normal((n, rank)) for n in M.shape)  # C as (d3, R) while fitting
        err = _als(M, A, B, C, warmup_iters, lam0, tol)
        if err >= tol and iters > 0:
            A, B, C, err = _lm(M, A, B, C, iters, tol)
        if err < tol:  # converging quadratically: a few nearly undamped steps take it to rounding level
            A, B, C, err = _lm(M, A, B, C, _POLISH_STEPS, 0.0, lam=1e-9)
        A, B, C = _balance(A, B, C)
        err = cp_relative_error(M, A, B, C.T)  # of the factors returned, after balancing
        fit = (A, B, C.T.copy(), err)
        exact = err <= tol and float(column_norms(*fit[:3]).max()) <= MAX_COLUMN_NORM
        if exact:
            return fit
        if best is None or err < best[3]:
            best = fit
    return best


def raise_rank(A: np.ndarray, B: np.ndarray, C: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same tensor at a higher rank: components are split into equal parts (``C`` rows divided).

    Any rank at or above an exact rank has an exact decomposition, and this is one: exact to rounding, with
    components no larger than the input's. Components ``0, 1, ...`` are split in turn (round robin).

    Shapes:
        A ``(d1, R)``, B ``(d2, R)``, C ``(R, d3)`` -> ``(d1, rank)``, ``(d2, rank)``, ``(rank, d3)``.
    """
    R = A.shape[1]
    if rank < R:
        raise ValueError(f"raise_rank: rank {rank} is below the factors' rank {R}")
    extra = np.arange(rank - R) % R
    parts = np.bincount(extra, minlength=R) + 1  # equal parts per original component
    sel = np.concatenate([np.arange(R), extra])
    return A[:, sel].copy(), B[:, sel].copy(), C[sel] / parts[sel, None]


def _data_name(L: int, rank: int, parity: str = "all") -> str:
    return f"cp_L{L}_R{rank}.npz" if parity == "all" else f"cp_{parity}_L{L}_R{rank}.npz"


class CPFitWarning(UserWarning):
    """CP factors that are not shipped are being fitted now (seconds to minutes)."""


class CPApproximationWarning(UserWarning):
    """The CP factors are not an exact decomposition: the product is only approximately equivariant."""


def _load(L: int, rank: int, parity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    ref = resources.files("mlip_kernels").joinpath("data", _data_name(L, rank, parity))
    with resources.as_file(ref) as path, np.load(path) as z:
        return z["A"], z["B"], z["C"], float(z["rel_error"])


@functools.cache
def _load_or_fit(L: int, rank: int, parity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    exact_rank = _defaults(parity).get(L)
    if exact_rank is not None and rank >= exact_rank:
        A, B, C, err = _load(L, exact_rank, parity)
        if rank > exact_rank:  # the shipped exact factors with components split: exact, no fit needed
            A, B, C = raise_rank(A, B, C, rank)
            err = cp_relative_error(shared_cg_tensor(L, L, L, parity), A, B, C)
    else:
        if L >= 3:  # L <= 2 fits in seconds; larger ones take tens of seconds to many minutes
            warnings.warn(
                f"CP factors for L={L}, rank={rank} ({parity} paths) are not shipped; fitting them now (may take "
                "minutes)",
                CPFitWarning,
                stacklevel=4,
            )
        M = shared_cg_tensor(L, L, L, parity)
        A, B, C, err = fit_cp(M, rank)
        if not is_exact(A, B, C, err):
            bound = f"below the exact rank {exact_rank}" if exact_rank is not None else "not an exact decomposition"
            exact = f"rank >= {exact_rank}" if exact_rank is not None else "an exact rank"
            warnings.warn(
                f"CP rank {rank} for L={L} ({parity} paths) is {bound}: the product is approximate, relative "
                f"error {err:.1e} (equivariance error of the same order); use {exact} (or the exact 'gaunt' or "
                "'cg' product) for an exact one",
                CPApproximationWarning,
                stacklevel=4,
            )
    for a in (A, B, C):
        a.setflags(write=False)
    return A, B, C, err


def cp_factors(
    L: int, rank: int | None = None, parity: str = "all"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """CP factors of ``shared_cg_tensor(L, L, L, parity)`` (float64 copies) and the relative error of M.

    * ``rank`` None: the shipped exact decomposition at :func:`default_rank`.
    * ``rank`` above it: the shipped factors with components split (:func:`raise_rank`), still exact.
    * ``rank`` below it (or ``L`` without shipped factors): fitted now by :func:`fit_cp` (deterministic,
      cached per process; :class:`CPFitWarning` for ``L >= 3``). Below the exact rank the fit is
      approximate: :class:`CPApproximationWarning` states its relative error, which is also returned (it is
      the TDN paper's accuracy-for-speed trade-off; the equivariance error is of the same order).

    Shapes:
        returns ``A (d, R)``, ``B (d, R)``, ``C (R, d)`` and the relative error.
    """
    _defaults(parity)
    rank = default_rank(L, parity) if rank is None else int(rank)
    if rank < 1:
        raise ValueError(f"CP rank must be a positive integer, got {rank}")
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
