"""Spherical harmonics, 3j/CG/Gaunt coefficients and Wigner D against e3nn and first principles."""

import math

import numpy as np
import pytest
import torch

from mlip_kernels.grid import gauss_legendre_grid
from mlip_kernels.sh import degree_index, spherical_harmonics
from mlip_kernels.wigner import (
    clebsch_gordan,
    gaunt_coefficients,
    random_rotation,
    wigner_3j,
    wigner_D,
    wigner_D_blocks,
)

o3 = pytest.importorskip("e3nn.o3")

LMAX = 8


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _e3nn_sh(x, lmax, normalize=True):
    return o3.spherical_harmonics(list(range(lmax + 1)), x, normalize=normalize, normalization="component")


def test_sh_matches_e3nn_float64():
    x = torch.randn(500, 3, dtype=torch.float64, generator=_gen())
    # add the poles and axes, where angle-based formulas break
    x = torch.cat([x, torch.eye(3, dtype=torch.float64), -torch.eye(3, dtype=torch.float64)])
    ours, ref = spherical_harmonics(x, LMAX), _e3nn_sh(x, LMAX)
    assert ours.shape == (x.shape[0], (LMAX + 1) ** 2)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    # unnormalised input: solid harmonics |r|^l Y(r/|r|), as e3nn's normalize=False
    x2 = 0.5 + torch.rand(200, 3, dtype=torch.float64, generator=_gen(1))
    ours2, ref2 = spherical_harmonics(x2, LMAX, normalize=False), _e3nn_sh(x2, LMAX, normalize=False)
    assert torch.allclose(ours2, ref2, rtol=1e-12, atol=1e-12)


def test_sh_float32_batch_shapes_and_norm():
    x = torch.randn(2, 3, 5, 3, generator=_gen(2))
    y = spherical_harmonics(x, 4)
    assert y.shape == (2, 3, 5, 25) and y.dtype == torch.float32
    assert torch.allclose(y, _e3nn_sh(x, 4), atol=2e-5)
    # component normalisation: sum_m Y_lm^2 = 2l+1
    sq = torch.zeros(2, 3, 5, 5).index_add_(-1, degree_index(4), y * y)
    assert torch.allclose(sq, (2 * torch.arange(5) + 1).float().expand_as(sq), atol=1e-4)


def test_sh_orthonormal_on_sphere():
    pts, w = gauss_legendre_grid(2 * LMAX)
    y = spherical_harmonics(torch.from_numpy(pts), LMAX).numpy()
    gram = y.T @ (w[:, None] * y)  # (1/4pi) int Y_a Y_b = delta_ab
    assert np.abs(gram - np.eye(gram.shape[0])).max() < 1e-13


def test_sh_gradients_finite_and_correct():
    x = torch.randn(6, 3, dtype=torch.float64, generator=_gen(3), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: spherical_harmonics(v, 5), (x,))
    pole = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    spherical_harmonics(pole, LMAX).sum().backward()
    assert torch.isfinite(pole.grad).all()


def test_sh_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        spherical_harmonics(torch.zeros(4, 2), 2)


def _triples(lmax):
    return [
        (l1, l2, l3)
        for l1 in range(lmax + 1)
        for l2 in range(lmax + 1)
        for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1)
    ]


def _check_3j_against_e3nn(triples):
    for l1, l2, l3 in triples:
        ours = wigner_3j(l1, l2, l3)
        ref = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        # the same tensor, not only up to a global sign
        assert torch.allclose(ours, ref, rtol=0, atol=1e-14), (l1, l2, l3)
        assert abs(ours.norm().item() - 1) < 1e-14


def test_wigner_3j_equals_e3nn_with_sign_plus_one():
    # e3nn needs ~0.1 s per triple: a sample of both parities here, all triples in the slow test
    sample = [(0, 0, 0), (1, 1, 1), (1, 1, 2), (2, 1, 2), (2, 2, 3), (3, 2, 4), (4, 4, 4), (5, 3, 3), (6, 6, 5)]
    _check_3j_against_e3nn(sample)


@pytest.mark.slow
def test_wigner_3j_equals_e3nn_all_triples():
    _check_3j_against_e3nn(_triples(5))


def test_wigner_3j_rejects_triangle_violation():
    with pytest.raises(ValueError, match="triangle"):
        wigner_3j(1, 1, 3)


def test_3j_invariant_and_cg_orthonormal():
    R = random_rotation(3, generator=_gen(4))
    D = wigner_D_blocks(6, R)
    sl = [slice(l * l, (l + 1) ** 2) for l in range(7)]
    for l1, l2, l3 in [(1, 1, 1), (2, 3, 4), (4, 4, 2), (3, 5, 6), (6, 6, 6)]:
        W = wigner_3j(l1, l2, l3)
        rot = torch.einsum("abc,nia,njb,nkc->nijk", W, D[:, sl[l1], sl[l1]], D[:, sl[l2], sl[l2]], D[:, sl[l3], sl[l3]])
        assert torch.allclose(rot, W.expand_as(rot), atol=1e-13)
        C = clebsch_gordan(l1, l2, l3).reshape(-1, 2 * l3 + 1)
        assert torch.allclose(C.T @ C, torch.eye(2 * l3 + 1, dtype=torch.float64), atol=1e-13)


def test_gaunt_coefficients_against_independent_quadrature():
    """(1/4pi) int Y Y Y by a fine Gauss-Legendre grid of e3nn's harmonics (independent of our SH and 3j)."""
    pts, w = gauss_legendre_grid(20)
    ye = _e3nn_sh(torch.from_numpy(pts), 6).numpy()
    sl = [slice(l * l, (l + 1) ** 2) for l in range(7)]
    for l1, l2, l3 in _triples(6):
        if l1 > 4 or l2 > 4:
            continue
        num = np.einsum("g,ga,gb,gc->abc", w, ye[:, sl[l1]], ye[:, sl[l2]], ye[:, sl[l3]])
        G = gaunt_coefficients(l1, l2, l3).numpy()
        assert np.abs(G - num).max() < 1e-13, (l1, l2, l3)
        if (l1 + l2 + l3) % 2:
            assert not G.any()


def test_gaunt_is_positive_multiple_of_e3nn_3j():
    """G = sqrt((2l1+1)(2l2+1)(2l3+1)) |3j(l1 l2 l3; 0 0 0)| W: with e3nn's phases the sign is always +."""
    for l1, l2, l3 in _triples(6):
        if (l1 + l2 + l3) % 2:
            continue
        G, W = gaunt_coefficients(l1, l2, l3), wigner_3j(l1, l2, l3)
        # |3j(000)|: the m=0 element of the complex 3j symbol; from the CG table
        from mlip_kernels.wigner import clebsch_gordan_complex

        tj000 = abs(clebsch_gordan_complex(l1, l2, l3)[l1, l2, l3]) / math.sqrt(2 * l3 + 1)
        scale = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1)) * tj000
        assert torch.allclose(G, scale * W, atol=1e-13), (l1, l2, l3)


def test_wigner_D_rotates_harmonics():
    R = random_rotation(4, generator=_gen(5))
    x = torch.randn(50, 3, dtype=torch.float64, generator=_gen(6))
    D = wigner_D_blocks(LMAX, R)
    y = spherical_harmonics(x, LMAX)
    for k in range(4):
        assert torch.allclose(spherical_harmonics(x @ R[k].T, LMAX), y @ D[k].T, atol=1e-12)
    # improper rotation: parity (-1)^l
    Dm = wigner_D_blocks(LMAX, -torch.eye(3, dtype=torch.float64))
    assert torch.allclose(Dm, torch.diag((-1.0) ** degree_index(LMAX).double()), atol=1e-13)


def test_wigner_D_group_properties():
    R1, R2 = random_rotation(2, 5, generator=_gen(7))
    D1, D2, D12 = wigner_D_blocks(6, R1), wigner_D_blocks(6, R2), wigner_D_blocks(6, R1 @ R2)
    eye = torch.eye(49, dtype=torch.float64)
    assert torch.allclose(D12, D1 @ D2, atol=1e-13)
    assert torch.allclose(D1 @ D1.transpose(-1, -2), eye.expand_as(D1), atol=1e-13)
    assert torch.allclose(wigner_D_blocks(6, torch.eye(3, dtype=torch.float64)), eye, atol=1e-14)
    assert torch.allclose(wigner_D(3, R1), D1[..., 9:16, 9:16])


def test_wigner_D_matches_e3nn():
    R = random_rotation(3, generator=_gen(8))
    irreps = o3.Irreps("+".join(f"1x{l}e" for l in range(5)))
    # e3nn goes through Euler angles in float32-ish precision internally; ours is exact
    assert torch.allclose(wigner_D_blocks(4, R), irreps.D_from_matrix(R), atol=1e-5)


def test_random_rotation_is_proper_orthogonal():
    R = random_rotation(100, generator=_gen(9))
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-14)
    assert torch.allclose(torch.linalg.det(R), torch.ones(100, dtype=torch.float64), atol=1e-14)
    assert not torch.allclose(R[0], R[1])
