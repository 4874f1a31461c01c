"""Clebsch-Gordan / Wigner 3j and Gaunt coefficients in the real basis, Wigner D matrices, rotations.

Everything here is computed by this package (no e3nn at runtime):

* complex Clebsch-Gordan coefficients ``<l1 m1 l2 m2 | l3 m3>`` (Condon-Shortley convention) by the
  Racah formula in exact integer/rational arithmetic; only the final conversion and square root are
  done in float64 (about 1 ulp);
* the change of basis complex -> real that matches :func:`mlip_kernels.sh.spherical_harmonics`
  (real harmonics without Condon-Shortley phase): ``Y_c = q R`` with, for ``m > 0``,
  ``Y_c^{+m} = (-1)^m (R_m + i R_{-m}) / sqrt2`` and ``Y_c^{-m} = (R_m - i R_{-m}) / sqrt2``, times the global
  phase ``(-i)^l`` that makes the real-basis Clebsch-Gordan tensor real;
* :func:`wigner_3j` is that real tensor with Frobenius norm 1. This is the same construction as
  ``e3nn.o3.wigner_3j`` and the tests check it equals e3nn's **exactly, with sign +1 for every
  (l1, l2, l3)** (not only up to a global sign);
* :func:`gaunt_coefficients` is computed independently of :func:`wigner_3j`, from the complex 3j symbols
  and the phase-free unitary change of basis, so it can check the quadrature Gaunt product.

The Wigner D matrices act on the component-normalised harmonics: ``Y(R r) = D(R) Y(r)``; they are
computed by projecting the rotated harmonics on the unrotated ones with a quadrature that is exact
for degree ``2l``, so they are exact to float64 rounding, differentiable in ``R``, and also valid for
improper ``R`` (then ``D_l(-I) = (-1)^l``).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import torch

from .sh import spherical_harmonics

__all__ = [
    "clebsch_gordan_complex",
    "wigner_3j",
    "clebsch_gordan",
    "gaunt_coefficients",
    "wigner_D",
    "wigner_D_blocks",
    "random_rotation",
]


def _triangle(l1: int, l2: int, l3: int) -> bool:
    return abs(l1 - l2) <= l3 <= l1 + l2


def _cg_coeff(j1: int, m1: int, j2: int, m2: int, j3: int, m3: int) -> float:
    """Complex CG ``<j1 m1 j2 m2 | j3 m3>`` (Racah formula in integers; rounded once to float, then sqrt)."""
    if m3 != m1 + m2 or not _triangle(j1, j2, j3) or max(abs(m1) - j1, abs(m2) - j2, abs(m3) - j3) > 0:
        return 0.0
    f = math.factorial
    # squared prefactor pre_num / pre_den (exact integers)
    pre_num = (2 * j3 + 1) * f(j1 + j2 - j3) * f(j1 - j2 + j3) * f(-j1 + j2 + j3)
    pre_num *= f(j3 + m3) * f(j3 - m3) * f(j1 - m1) * f(j1 + m1) * f(j2 - m2) * f(j2 + m2)
    pre_den = f(j1 + j2 + j3 + 1)
    kmin = max(0, j2 - j3 - m1, j1 - j3 + m2)
    kmax = min(j1 + j2 - j3, j1 - m1, j2 + m2)
    dens = [
        f(k) * f(j1 + j2 - j3 - k) * f(j1 - m1 - k) * f(j2 + m2 - k) * f(j3 - j2 + m1 + k) * f(j3 - j1 - m2 + k)
        for k in range(kmin, kmax + 1)
    ]
    # Racah sum over a common denominator: s = num / lcm (integers, no per-term gcd of Fraction)
    lcm = math.lcm(*dens)
    num = sum((-1) ** k * (lcm // den) for k, den in zip(range(kmin, kmax + 1), dens))
    if num == 0:
        return 0.0
    # num/lcm * sqrt(pre) = sign(num) * sqrt(num^2 pre / lcm^2): one rounding of an exact rational
    val = math.sqrt(float(Fraction(num * num * pre_num, lcm * lcm * pre_den)))
    return val if num > 0 else -val


@functools.cache
def _cg_complex_np(l1: int, l2: int, l3: int) -> np.ndarray:
    out = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    if _triangle(l1, l2, l3):
        for m1 in range(-l1, l1 + 1):
            for m2 in range(-l2, l2 + 1):
                if abs(m1 + m2) <= l3:
                    out[l1 + m1, l2 + m2, l3 + m1 + m2] = _cg_coeff(l1, m1, l2, m2, l3, m1 + m2)
    out.setflags(write=False)
    return out


def clebsch_gordan_complex(l1: int, l2: int, l3: int) -> np.ndarray:
    """Complex-basis CG ``<l1 m1 l2 m2 | l3 m3>`` (Condon-Shortley). Shapes: ``(2l1+1, 2l2+1, 2l3+1)``."""
    return _cg_complex_np(l1, l2, l3).copy()


def _real_to_complex(l: int, phase: bool) -> np.ndarray:
    """``q`` with ``Y_complex = q @ Y_real`` (rows: complex m, columns: real m); unitary."""
    q = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    s = 1 / math.sqrt(2.0)
    q[l, l] = 1.0
    for m in range(1, l + 1):
        q[l - m, l + m] = s
        q[l - m, l - m] = -1j * s
        q[l + m, l + m] = (-1) ** m * s
        q[l + m, l - m] = 1j * (-1) ** m * s
    return ((-1j) ** l) * q if phase else q


@functools.cache
def _w3j_np(l1: int, l2: int, l3: int) -> np.ndarray:
    if not _triangle(l1, l2, l3):
        raise ValueError(f"wigner_3j: ({l1}, {l2}, {l3}) violates the triangle rule |l1-l2| <= l3 <= l1+l2")
    q1, q2, q3 = (_real_to_complex(l, phase=True) for l in (l1, l2, l3))
    c = np.einsum("ij,kl,nm,ikn->jlm", q1, q2, q3.conj(), _cg_complex_np(l1, l2, l3), optimize=True)
    # with the (-i)^l phases the tensor is real; the imaginary part is rounding only
    assert np.abs(c.imag).max() < 1e-12, "complex->real change of basis left an imaginary part"
    c = c.real / np.linalg.norm(c.real)
    c.setflags(write=False)
    return c


def wigner_3j(l1: int, l2: int, l3: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Real-basis Wigner 3j tensor, Frobenius norm 1, identical to ``e3nn.o3.wigner_3j``.

    Invariant: ``einsum('abc,ia,jb,kc->ijk', W, D1, D2, D3) == W`` for every rotation.

    Shapes:
        returns ``(2l1+1, 2l2+1, 2l3+1)``.
    """
    return torch.tensor(_w3j_np(l1, l2, l3), dtype=dtype, device=device)


def clebsch_gordan(l1: int, l2: int, l3: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Real-basis CG coupling ``sqrt(2l3+1) * wigner_3j``: ``sum_{m1 m2} C[m1,m2,m3] C[m1,m2,m3'] = delta``.

    This is the per-path block used by the CG and CP tensor products (it maps component-normalised
    inputs to component-normalised outputs).

    Shapes:
        returns ``(2l1+1, 2l2+1, 2l3+1)``.
    """
    return math.sqrt(2 * l3 + 1) * wigner_3j(l1, l2, l3, dtype=dtype, device=device)


@functools.cache
def _gaunt_np(l1: int, l2: int, l3: int) -> np.ndarray:
    shape = (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    if not _triangle(l1, l2, l3) or (l1 + l2 + l3) % 2:
        return np.zeros(shape)
    # complex 3j symbol (l1 l2 l3; m1 m2 m3) = (-1)^(l1-l2-m3) / sqrt(2l3+1) <l1 m1 l2 m2 | l3 -m3>
    cg = _cg_complex_np(l1, l2, l3)
    m3 = np.arange(-l3, l3 + 1)
    tj = cg[:, :, ::-1] * ((-1.0) ** (l1 - l2 - m3)) / math.sqrt(2 * l3 + 1)
    tj000 = tj[l1, l2, l3]
    # int Yc1 Yc2 Yc3 dOmega (orthonormal complex harmonics), the classical Gaunt formula
    full = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi)) * tj000 * tj
    # real orthonormal harmonics R = q^H Yc (q without phase): G_real = sum q^H... (unitary, no sign choice)
    p1, p2, p3 = (_real_to_complex(l, phase=False).conj().T for l in (l1, l2, l3))
    g = np.einsum("ai,bj,ck,ijk->abc", p1, p2, p3, full, optimize=True)
    assert np.abs(g.imag).max() < 1e-12
    # component normalisation Y = sqrt(4pi) Yhat and the 1/(4pi) projection: G = sqrt(4pi) int Yhat^3
    g = math.sqrt(4 * math.pi) * g.real
    g.setflags(write=False)
    return g


def gaunt_coefficients(l1: int, l2: int, l3: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Gaunt tensor ``G[a,b,c] = (1/4pi) int Y_a Y_b Y_c dOmega`` (component-normalised real harmonics).

    With this normalisation ``f = sum_a x_a Y_a``, ``g = sum_b y_b Y_b`` give ``f g = sum_c (G x y)_c Y_c``
    (projected on degrees <= l3), and ``x = e_0`` (the constant 1) is the identity. Zero unless
    ``l1+l2+l3`` is even and the triangle rule holds. Computed from the complex 3j symbols, independently
    of :func:`wigner_3j` and of any quadrature.

    Shapes:
        returns ``(2l1+1, 2l2+1, 2l3+1)``.
    """
    return torch.tensor(_gaunt_np(l1, l2, l3), dtype=dtype, device=device)


@functools.cache
def _projection_grid(lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre x uniform grid exact for spherical polynomials of degree ``2*lmax``."""
    n_theta, n_phi = lmax + 1, 2 * lmax + 1
    z, w = np.polynomial.legendre.leggauss(n_theta)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    s = np.sqrt(1 - z * z)
    pts = np.stack([np.outer(s, np.cos(phi)), np.outer(s, np.sin(phi)), np.outer(z, np.ones(n_phi))], axis=-1).reshape(
        -1, 3
    )
    wts = np.outer(w, np.full(n_phi, 2 * np.pi / n_phi)).reshape(-1)
    return pts, wts


def wigner_D_blocks(lmax: int, R: torch.Tensor) -> torch.Tensor:
    """Block-diagonal real Wigner D for degrees ``0..lmax``: ``Y(R r) = D(R) Y(r)``.

    For features ``x [..., C, d]`` the rotated features are ``x @ D.T``. Works for any orthogonal ``R``
    (improper ones give the parity ``(-1)^l``), is differentiable in ``R`` and exact to rounding.

    Shapes:
        R ``[..., 3, 3]`` -> ``[..., d, d]`` with ``d = (lmax+1)^2``.
    """
    pts, wts = _projection_grid(lmax)
    g = torch.tensor(pts, dtype=R.dtype, device=R.device)
    w = torch.tensor(wts / (4 * math.pi), dtype=R.dtype, device=R.device)
    y = spherical_harmonics(g, lmax)  # [G, d]
    y_rot = spherical_harmonics(g @ R.transpose(-1, -2), lmax, normalize=False)  # [..., G, d], |R g| = 1
    # D[a, b] = (1/4pi) int Y_a(R r) Y_b(r) dOmega, exact because the integrand has degree <= 2 lmax
    D = y_rot.transpose(-1, -2) @ (w[:, None] * y)
    deg = torch.cat([torch.full((2 * l + 1,), l) for l in range(lmax + 1)]).to(R.device)
    return D * (deg[:, None] == deg[None, :]).to(D.dtype)  # off-block entries are exactly zero


def wigner_D(l: int, R: torch.Tensor) -> torch.Tensor:
    """Real Wigner D matrix of degree ``l``: ``Y_l(R r) = D_l(R) Y_l(r)``.

    Shapes:
        R ``[..., 3, 3]`` -> ``[..., 2l+1, 2l+1]``.
    """
    return wigner_D_blocks(l, R)[..., l * l :, l * l :]


def random_rotation(
    *shape: int, dtype: torch.dtype = torch.float64, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Haar-random proper rotation matrices (normalised Gaussian quaternions).

    Shapes:
        returns ``[*shape, 3, 3]``.
    """
    q = torch.randn(*shape, 4, dtype=torch.float64, generator=generator)
    q = q / q.norm(dim=-1, keepdim=True)
    a, b, c, d = q.unbind(-1)
    R = torch.stack(
        [
            a * a + b * b - c * c - d * d,
            2 * (b * c - a * d),
            2 * (b * d + a * c),
            2 * (b * c + a * d),
            a * a - b * b + c * c - d * d,
            2 * (c * d - a * b),
            2 * (b * d - a * c),
            2 * (c * d + a * b),
            a * a - b * b - c * c + d * d,
        ],
        dim=-1,
    ).reshape(*shape, 3, 3)
    return R.to(dtype=dtype, device=device)
