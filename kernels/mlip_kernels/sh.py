"""Real spherical harmonics in the e3nn basis, and irreps index helpers.

Conventions (fixed for the whole codebase, see ARCHITECTURE/DESIGN section 3):

* real spherical harmonics, component-normalised: ``sum_m Y_lm(r)^2 = 2l+1`` for unit ``r``;
* order ``m = -l..l`` inside a block, blocks ``l = 0..L`` contiguous, ``d = (L+1)^2``;
* the same basis as ``e3nn.o3.spherical_harmonics(l, r, normalize=True, normalization="component")``:
  e3nn's polar axis is ``y``, i.e. ``Y_e3nn(x, y, z) = Y_std(X=z, Y=x, Z=y)`` where ``Y_std`` are the
  textbook real harmonics with polar axis ``Z`` and *no* Condon-Shortley phase
  (``Y_{l,m>0} ~ cos(m phi)``, ``Y_{l,-m} ~ sin(m phi)``, all leading coefficients positive).
  The coordinate map ``(x, y, z) -> (z, x, y)`` is a proper rotation, so invariant tensors (3j, Gaunt)
  are the same in both bases.

The harmonics are computed by the standard stable recurrence on normalised associated Legendre
polynomials in Cartesian form (``Z`` and ``r^2``) times ``Re/Im (X + iY)^m``, so there is no ``acos`` or
``atan2``: the result is a polynomial in the coordinates (smooth at the poles, differentiable, any dtype).
With ``normalize=False`` it returns the solid harmonics ``|r|^l Y_lm(r/|r|)`` (as e3nn does).
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["spherical_harmonics", "irreps_dim", "degree_slices", "degree_index"]


def irreps_dim(lmax: int) -> int:
    """Dimension ``(lmax+1)^2`` of the features ``[..., d]`` holding degrees ``0..lmax``."""
    return (lmax + 1) ** 2


def degree_slices(lmax: int) -> list[slice]:
    """Slice of the irreps axis holding degree ``l``, for ``l = 0..lmax``."""
    return [slice(l * l, (l + 1) ** 2) for l in range(lmax + 1)]


def degree_index(lmax: int) -> torch.Tensor:
    """Degree ``l`` of each component of the irreps axis. Shapes: returns ``(d,)`` int64."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])


@functools.cache
def _coefficients(lmax: int) -> tuple:
    """float64 recurrence coefficients (computed once per lmax; plain floats, immutable tuples)."""
    # diag[m]: Ptilde_m^m = (2m-1)!! / sqrt((2m)!)   (constant part, the sin^m is in Re/Im (X+iY)^m)
    diag = [1.0]
    for m in range(1, lmax + 1):
        diag.append(diag[-1] * math.sqrt((2 * m - 1) / (2 * m)))
    # rec[(l, m)] = (a, b): Ptilde_l^m = a Z Ptilde_{l-1}^m - b r^2 Ptilde_{l-2}^m
    rec = {}
    for m in range(lmax + 1):
        for l in range(m + 1, lmax + 1):
            a = (2 * l - 1) / math.sqrt((l - m) * (l + m))
            b = math.sqrt((l + m - 1) * (l - m - 1) / ((l - m) * (l + m))) if l >= m + 2 else 0.0
            rec[(l, m)] = (a, b)
    norm = tuple(math.sqrt(2 * l + 1) for l in range(lmax + 1))
    return tuple(diag), rec, norm


def spherical_harmonics(vectors: torch.Tensor, lmax: int, normalize: bool = True) -> torch.Tensor:
    """Real component-normalised spherical harmonics of degrees ``0..lmax`` (e3nn basis).

    Args:
        vectors: Cartesian vectors (need not be unit length).
        lmax: largest degree (any non-negative int; checked against e3nn up to 8 in the tests).
        normalize: project ``vectors`` onto the unit sphere first (zero vectors give ``Y_0`` only,
            as e3nn does); otherwise return solid harmonics ``|r|^l Y(r/|r|)``.

    Shapes:
        vectors ``[..., 3]`` -> ``[..., (lmax+1)^2]``, same dtype and device.
    """
    if vectors.shape[-1] != 3:
        raise ValueError(f"spherical_harmonics expects [..., 3] vectors, got shape {tuple(vectors.shape)}")
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    x, y, z = vectors.unbind(-1)
    # textbook frame with polar axis Z: (X, Y, Z) = (z, x, y); see module docstring.
    X, Y, Z = z, x, y
    r2 = X * X + Y * Y + Z * Z
    diag, rec, norm = _coefficients(lmax)
    one = torch.ones_like(X)

    # cos_m + i sin_m = (X + iY)^m, built by complex multiplication in real arithmetic.
    cos_m, sin_m = [one], [torch.zeros_like(X)]
    for _ in range(1, lmax + 1):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(X * c - Y * s)
        sin_m.append(X * s + Y * c)

    # P[l][m] = Ptilde_l^m (normalised Legendre part, a polynomial in Z and r^2)
    P: list[list[torch.Tensor]] = [[] for _ in range(lmax + 1)]
    for l in range(lmax + 1):
        for m in range(l + 1):
            if m == l:
                P[l].append(diag[m] * one)
            else:
                a, b = rec[(l, m)]
                val = a * Z * P[l - 1][m]
                if b != 0.0:
                    val = val - b * r2 * P[l - 2][m]
                P[l].append(val)

    out = []
    sqrt2 = math.sqrt(2.0)
    for l in range(lmax + 1):
        k = norm[l]
        neg = [(k * sqrt2) * P[l][m] * sin_m[m] for m in range(l, 0, -1)]
        pos = [(k * sqrt2) * P[l][m] * cos_m[m] for m in range(1, l + 1)]
        out.extend(neg + [k * P[l][0]] + pos)
    return torch.stack(out, dim=-1)
