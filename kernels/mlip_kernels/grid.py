"""Spherical quadratures and the low-rank Gaunt tensor product factors.

The Gaunt product of ``f = sum_a x_a Y_a`` and ``g = sum_b y_b Y_b`` is the projection of ``f g`` back on
the harmonics, ``out_c = (1/4pi) int f g Y_c dOmega``. A quadrature ``(r_k, w_k)`` exact for spherical
polynomials of degree ``L1 + L2 + Lout`` turns it into the low-rank form ``out = C^T ((A^T x) * (B^T y))``
with ``A = Y_{L1}(r)^T``, ``B = Y_{L2}(r)^T``, ``C = diag(w) Y_{Lout}(r)`` and weights normalised to
``sum_k w_k = 1`` (the ``1/4pi``). Rank ``R`` = number of points.

Two exact families (``grid=``):

* ``"gl"``: Gauss-Legendre in ``cos(theta)`` (``ceil((D+1)/2)`` nodes) x uniform in ``phi`` (``D+1`` nodes),
  exact for degree ``D``; the smallest product grid (fewer ``phi`` nodes alias ``e^{i D phi}``).
* ``"lebedev"``: octahedrally symmetric Lebedev-Laikov rules (tabulated, shipped as
  ``data/lebedev.npz``, orders 3..35; generated from ``scipy.integrate.lebedev_rule`` by
  ``python -m mlip_kernels.grid``). About 2/3 of the points of ``"gl"`` at the same degree. Some rules
  have a few negative weights (orders 13, 25, 27); exactness does not need positivity.

Rank R for ``L1 = L2 = Lout = L`` (degree ``3L``; the Lebedev order is the next odd one)::

    L          1    2    3    4    5    6    7    8
    gl         8   28   50   91  128  190  242  325
    lebedev    6   26   38   74   86  146  170  230
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import numpy as np
import torch

from .sh import spherical_harmonics

__all__ = ["gauss_legendre_grid", "lebedev_grid", "sphere_grid", "gaunt_factors", "LEBEDEV_ORDERS"]

LEBEDEV_ORDERS = (3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 35)


def gauss_legendre_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Product grid exact for spherical polynomials of degree ``<= degree``.

    Shapes:
        returns points ``(G, 3)`` (unit vectors) and weights ``(G,)`` with ``sum = 1``,
        ``G = ceil((degree+1)/2) * (degree+1)``.
    """
    n_theta = degree // 2 + 1  # 2n-1 >= degree
    n_phi = degree + 1  # sum_k e^{i m phi_k} = 0 for 0 < |m| <= degree
    z, w = np.polynomial.legendre.leggauss(n_theta)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    s = np.sqrt(1 - z * z)
    pts = np.stack([np.outer(s, np.cos(phi)), np.outer(s, np.sin(phi)), np.outer(z, np.ones(n_phi))], axis=-1)
    wts = np.outer(w / 2, np.full(n_phi, 1 / n_phi))
    return pts.reshape(-1, 3), wts.reshape(-1)


@functools.lru_cache(maxsize=1)
def _lebedev_table() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    ref = resources.files("mlip_kernels").joinpath("data", "lebedev.npz")
    table = {}
    with resources.as_file(ref) as path, np.load(path) as data:
        for order in LEBEDEV_ORDERS:
            p, w = data[f"points_{order}"], data[f"weights_{order}"]
            p.setflags(write=False)
            w.setflags(write=False)
            table[order] = (p, w)
    return table


def lebedev_grid(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest shipped Lebedev rule exact for degree ``<= degree``.

    Raises:
        ValueError: if ``degree`` exceeds the largest shipped order (35).

    Shapes:
        returns points ``(G, 3)`` and weights ``(G,)`` with ``sum = 1``.
    """
    for order in LEBEDEV_ORDERS:
        if order >= degree:
            p, w = _lebedev_table()[order]
            return p.copy(), w.copy()
    raise ValueError(f"no shipped Lebedev rule of degree >= {degree} (max {LEBEDEV_ORDERS[-1]}); use grid='gl'")


def sphere_grid(degree: int, grid: str = "lebedev") -> tuple[np.ndarray, np.ndarray]:
    """Quadrature exact for degree ``<= degree``: ``"gl"``, ``"lebedev"`` or ``"auto"`` (the smaller)."""
    if grid == "gl":
        return gauss_legendre_grid(degree)
    if grid == "lebedev":
        return lebedev_grid(degree)
    if grid == "auto":
        cands = [gauss_legendre_grid(degree)]
        if degree <= LEBEDEV_ORDERS[-1]:
            cands.append(lebedev_grid(degree))
        return min(cands, key=lambda pw: len(pw[1]))
    raise ValueError(f"unknown grid {grid!r}; expected 'gl', 'lebedev' or 'auto'")


def gaunt_factors(L1: int, L2: int, Lout: int, grid: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-rank factors of the exact Gaunt product (float64).

    ``einsum('ar,br,rc->abc', A, B, C)`` equals the Gaunt tensor of
    :func:`mlip_kernels.wigner.gaunt_coefficients` for all degrees ``<= L1, L2, Lout``.

    Shapes:
        returns ``A (d1, R)``, ``B (d2, R)``, ``C (R, d3)`` with ``d_i = (L_i+1)^2``.
    """
    pts, wts = sphere_grid(L1 + L2 + Lout, grid)
    y = spherical_harmonics(torch.from_numpy(pts), max(L1, L2, Lout)).numpy()  # [G, d]
    A = y[:, : (L1 + 1) ** 2].T.copy()
    B = y[:, : (L2 + 1) ** 2].T.copy()
    C = wts[:, None] * y[:, : (Lout + 1) ** 2]
    return A, B, C


def _write_lebedev_table(path) -> None:
    """Regenerate ``data/lebedev.npz`` (development only: needs scipy >= 1.15)."""
    from scipy.integrate import lebedev_rule

    arrays = {}
    for order in LEBEDEV_ORDERS:
        x, w = lebedev_rule(order)
        arrays[f"points_{order}"] = np.ascontiguousarray(x.T, dtype=np.float64)
        arrays[f"weights_{order}"] = np.asarray(w, dtype=np.float64) / (4 * math.pi)
    np.savez_compressed(path, **arrays)


if __name__ == "__main__":  # python -m mlip_kernels.grid  -> rewrites the shipped Lebedev table
    out = resources.files("mlip_kernels").joinpath("data", "lebedev.npz")
    _write_lebedev_table(str(out))
    print(f"wrote {out}")
