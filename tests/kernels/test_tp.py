"""The three tensor products (cg, gaunt, cp) behind the one low-rank interface."""

import warnings

import numpy as np
import pytest
import torch

from mlip_kernels.cg import cg_tensor_product, shared_cg_tensor, tp_paths
from mlip_kernels.cp import (
    DEFAULT_RANKS,
    EVEN_DEFAULT_RANKS,
    EXACT_TOL,
    MAX_COLUMN_NORM,
    CPApproximationWarning,
    column_norms,
    cp_factors,
    cp_relative_error,
    equivariance_error,
    fit_cp,
    raise_rank,
)
from mlip_kernels.grid import gaunt_factors, sphere_grid
from mlip_kernels.sh import spherical_harmonics
from mlip_kernels.tp import LowRankTP, lowrank_product, make_tp
from mlip_kernels.wigner import gaunt_coefficients

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=F64, generator=_gen(seed))


def _dense_gaunt(L1, L2, L3):
    G = np.zeros(((L1 + 1) ** 2, (L2 + 1) ** 2, (L3 + 1) ** 2))
    for l1, l2, l3 in tp_paths(L1, L2, L3):
        G[l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2] = gaunt_coefficients(
            l1, l2, l3
        ).numpy()
    return G


SHAPES = [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4), (2, 1, 3), (3, 2, 1)]


@pytest.mark.parametrize("kind", ["cg", "gaunt"])
@pytest.mark.parametrize("L1,L2,L3", SHAPES)
def test_exact_products_are_equivariant(kind, L1, L2, L3):
    tp = make_tp(kind, L1, L2, L3, dtype=F64)
    assert equivariance_error(tp, L1, L2, L3, n=16) < 1e-12


DEFAULT_CASES = [("all", L) for L in sorted(DEFAULT_RANKS)] + [("even", L) for L in sorted(EVEN_DEFAULT_RANKS)]


@pytest.mark.parametrize("parity,L", DEFAULT_CASES, ids=[f"{p}-L{L}" for p, L in DEFAULT_CASES])
def test_cp_default_rank_within_documented_bound(parity, L):
    tp = make_tp("cp", L, dtype=F64, parity=parity)
    assert tp.rank == (DEFAULT_RANKS if parity == "all" else EVEN_DEFAULT_RANKS)[L]
    # the shipped factors are exact decompositions of M: recompute the error rather than trust the stored one
    M = shared_cg_tensor(L, L, L, parity)
    rel = np.linalg.norm(tp.dense().numpy() - M) / np.linalg.norm(M)
    assert rel <= EXACT_TOL and abs(rel - tp.rel_error) < 1e-15
    # with bounded components (no cancellation of diverging terms)
    assert column_norms(tp.A.numpy(), tp.B.numpy(), tp.C.numpy()).max() <= MAX_COLUMN_NORM
    assert equivariance_error(tp, L, L, L, n=16) < 1e-12
    assert tp.parity_odd_paths_present == (parity == "all")


def test_even_paths_are_the_inversion_symmetric_part():
    """The even-path tensor equals the CG tensor with per-path weights 1 (even) / 0 (odd), and the even
    products commute with inversion (D(-I) = (-1)^l per degree) while the full one does not."""
    L = 2
    paths = tp_paths(L, L, L)
    mask = torch.tensor([float((a + b + c) % 2 == 0) for a, b, c in paths], dtype=F64)
    x, y = _rand(6, 3, 9, seed=20), _rand(6, 3, 9, seed=21)
    ref = cg_tensor_product(x, y, L, L, L, path_weights=mask)
    parity = torch.cat([torch.full((2 * l + 1,), (-1.0) ** l, dtype=F64) for l in range(L + 1)])
    for kind in ("cg", "cp"):
        tp = make_tp(kind, L, dtype=F64, parity="even")
        assert torch.allclose(tp(x, y), ref, atol=1e-12)
        assert torch.allclose(tp(x * parity, y * parity), tp(x, y) * parity, atol=1e-12)
    full = make_tp("cg", L, dtype=F64)
    assert not torch.allclose(full(x * parity, y * parity), full(x, y) * parity, atol=1e-3)
    with pytest.raises(ValueError, match="parity"):
        make_tp("cp", L, parity="odd")
    with pytest.raises(ValueError, match="parity"):
        shared_cg_tensor(L, L, L, parity="none")


def test_cp_low_rank_is_visibly_not_equivariant():
    """Rank 7 L^2 = 7 at L = 1 cannot represent M (exact rank 8): the test of the bound can fail."""
    A, B, C, err = fit_cp(shared_cg_tensor(1, 1, 1), 7, restarts=2, warmup_iters=200, iters=0)
    assert 1e-2 < err < 5e-2
    tp = LowRankTP(A, B, C, kind="cp", L_in1=1, L_in2=1, L_out=1, paths=tp_paths(1, 1, 1), dtype=F64)
    assert equivariance_error(tp, 1, 1, 1) > 1e-3


def test_cp_fit_is_deterministic_and_exact_at_rank_8():
    M = shared_cg_tensor(1, 1, 1)
    A1, B1, C1, e1 = fit_cp(M, 8, restarts=2, iters=1000)
    A2, B2, C2, e2 = fit_cp(M, 8, restarts=2, iters=1000)
    assert e1 <= EXACT_TOL and e1 == e2 == cp_relative_error(M, A1, B1, C1)
    assert np.array_equal(A1, A2) and np.array_equal(C1, C2)


@pytest.mark.slow
def test_restarts_find_the_even_rank_18_at_L2():
    """Near the smallest exact rank most starts stall in local minima; the restarts are what find it (the
    shipped L = 2 file), and the first exact start wins."""
    M = shared_cg_tensor(2, 2, 2, "even")
    errors = [fit_cp(M, 18, restarts=1, seed=s)[3] for s in range(8)]
    assert max(errors) > 1e-3 and min(errors) <= EXACT_TOL
    A, B, C, err = fit_cp(M, 18, restarts=8, seed=0)
    assert err == next(e for e in errors if e <= EXACT_TOL) == cp_relative_error(M, A, B, C)
    assert column_norms(A, B, C).max() <= MAX_COLUMN_NORM


def test_raise_rank_keeps_the_tensor():
    A, B, C, _ = cp_factors(1)
    for rank in (A.shape[1], A.shape[1] + 3, 3 * A.shape[1] + 1):
        A2, B2, C2 = raise_rank(A, B, C, rank)
        assert A2.shape[1] == B2.shape[1] == C2.shape[0] == rank
        full = np.einsum("ir,jr,rk->ijk", A, B, C)
        assert np.abs(np.einsum("ir,jr,rk->ijk", A2, B2, C2) - full).max() < 1e-15
        assert column_norms(A2, B2, C2).max() <= column_norms(A, B, C).max() + 1e-15
    with pytest.raises(ValueError, match="below"):
        raise_rank(A, B, C, A.shape[1] - 1)


@pytest.mark.parametrize("parity, L, above", [("even", 2, 28), ("even", 4, 130), ("all", 3, 100)])
def test_ranks_above_the_exact_rank_are_exact(parity, L, above):
    """A user's rank above the shipped exact rank (e.g. the TDN paper's 7 L^2 = 28 at L = 2) is exact too,
    and costs no fit: the shipped factors are extended."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither "fitting now" nor "approximate"
        tp = make_tp("cp", L, rank=above, parity=parity, dtype=F64)
    M = shared_cg_tensor(L, L, L, parity)
    assert tp.rank == above and tp.rel_error == cp_relative_error(M, tp.A.numpy(), tp.B.numpy(), tp.C.numpy())
    assert tp.rel_error <= EXACT_TOL
    assert equivariance_error(tp, L, L, L, n=16) < 1e-12


def test_ranks_below_the_exact_rank_say_how_approximate_they_are():
    """Below the exact rank the fit is an accuracy-for-speed trade-off: allowed, with the error stated."""
    exact = EVEN_DEFAULT_RANKS[1]
    with pytest.warns(
        CPApproximationWarning,
        match=rf"rank {exact - 1} for L=1 \(even paths\) is below the exact rank "
        rf"{exact}: the product is approximate, relative error \d\.\de-0\d",
    ) as record:
        tp = make_tp("cp", 1, rank=exact - 1, parity="even", dtype=F64)
    assert len(record) == 1
    M = shared_cg_tensor(1, 1, 1, "even")
    assert tp.rel_error == cp_relative_error(M, tp.A.numpy(), tp.B.numpy(), tp.C.numpy())
    assert f"{tp.rel_error:.1e}" in str(record[0].message)
    assert 1e-6 < tp.rel_error < 1e-1
    assert equivariance_error(tp, 1, 1, 1, n=16) > 1e-6  # and it shows
    with pytest.raises(ValueError, match="positive"):
        cp_factors(1, 0)


def test_gaunt_lowrank_equals_gaunt_coefficients():
    for L1, L2, L3 in SHAPES + [(5, 5, 5)]:
        G = _dense_gaunt(L1, L2, L3)
        for grid in ("gl", "lebedev"):
            A, B, C = gaunt_factors(L1, L2, L3, grid=grid)
            assert np.abs(np.einsum("ar,br,rc->abc", A, B, C) - G).max() < 1e-13, (L1, L2, L3, grid)


def test_gaunt_is_the_product_of_spherical_functions():
    """With L_out >= L1 + L2 the product function f g is represented exactly: check it pointwise."""
    L1, L2 = 2, 3
    tp = make_tp("gaunt", L1, L2, L1 + L2, dtype=F64)
    x, y = _rand(1, 9, seed=1), _rand(1, 16, seed=2)
    r = _rand(40, 3, seed=3)
    Y = spherical_harmonics(r, L1 + L2)
    f, g = Y[:, :9] @ x[0], Y[:, :16] @ y[0]
    assert torch.allclose(Y @ tp(x, y)[0], f * g, atol=1e-12)


def test_gaunt_grid_sizes():
    expect = {"gl": [8, 28, 50, 91, 128, 190], "lebedev": [6, 26, 38, 74, 86, 146]}
    for grid, ranks in expect.items():
        assert [make_tp("gaunt", L, grid=grid).rank for L in range(1, 7)] == ranks
    assert make_tp("gaunt", 3).rank == 38  # "auto" picks the smaller exact grid


@pytest.mark.parametrize("grid", ["gl", "lebedev"])
def test_grids_integrate_harmonics_exactly(grid):
    for degree in (3, 6, 9, 12, 18):
        pts, w = sphere_grid(degree, grid)
        assert abs(w.sum() - 1) < 1e-14
        mean = w @ spherical_harmonics(torch.from_numpy(pts), degree).numpy()  # (1/4pi) int Y_a
        assert abs(mean[0] - 1) < 1e-13 and np.abs(mean[1:]).max() < 1e-13, (grid, degree)
    with pytest.raises(ValueError, match="Lebedev"):
        sphere_grid(40, "lebedev")
    with pytest.raises(ValueError, match="unknown grid"):
        sphere_grid(3, "fibonacci")


def test_cg_lowrank_equals_reference_with_path_weights():
    for L1, L2, L3 in [(2, 2, 2), (3, 1, 2), (1, 3, 4)]:
        tp = make_tp("cg", L1, L2, L3, dtype=F64)
        x, y = _rand(5, 4, (L1 + 1) ** 2, seed=4), _rand(5, 1, (L2 + 1) ** 2, seed=5)
        pw, w = _rand(5, 4, len(tp.paths), seed=6), _rand(5, 4, seed=7)
        ref = cg_tensor_product(x, y, L1, L2, L3, path_weights=pw)
        assert torch.allclose(tp(x, y, path_weights=pw), ref, atol=1e-13)
        assert torch.allclose(tp(x, y, weights=w), w[..., None] * cg_tensor_product(x, y, L1, L2, L3), atol=1e-13)
        assert np.abs(tp.dense().numpy() - shared_cg_tensor(L1, L2, L3)).max() < 1e-15


def test_cp_lowrank_approximates_cg_reference():
    tp = make_tp("cp", 2, dtype=F64)
    x, y = _rand(7, 3, 9, seed=8), _rand(7, 3, 9, seed=9)
    ref = cg_tensor_product(x, y, 2, 2, 2)
    assert (tp(x, y) - ref).norm() / ref.norm() < 1e-6


def test_parity_odd_paths_cross_product():
    a, b = _rand(3, seed=10), _rand(3, seed=11)
    x = torch.cat([torch.zeros(1, dtype=F64), a])[None]  # l = 1 components are (x, y, z) in e3nn's basis
    y = torch.cat([torch.zeros(1, dtype=F64), b])[None]
    cross = torch.linalg.cross(a, b) / 2**0.5
    cg, cp, gaunt = (make_tp(k, 1, dtype=F64) for k in ("cg", "cp", "gaunt"))
    assert cg.parity_odd_paths_present and cp.parity_odd_paths_present
    assert not gaunt.parity_odd_paths_present
    assert (1, 1, 1) in cg.paths and (1, 1, 1) not in gaunt.paths
    assert torch.allclose(cg(x, y)[0, 1:], cross, atol=1e-14)
    assert torch.allclose(cp(x, y)[0, 1:], cross, atol=1e-10)
    assert torch.allclose(gaunt(x, y)[0, 1:], torch.zeros(3, dtype=F64), atol=1e-14)
    # the l = 0 output is the dot product in all three (even path)
    for tp in (cg, cp, gaunt):
        # (1/4pi) int Y_1m Y_1m' = delta for gaunt; CG(1,1,0) = delta / sqrt3
        expect = a @ b if tp is gaunt else a @ b / 3**0.5
        assert torch.allclose(tp(x, y)[0, 0], expect, atol=1e-10)


def test_symmetry_in_inputs():
    L = 3
    x, y = _rand(4, 2, 16, seed=12), _rand(4, 2, 16, seed=13)
    gaunt, cg = make_tp("gaunt", L, dtype=F64), make_tp("cg", L, dtype=F64)
    assert torch.allclose(gaunt(x, y), gaunt(y, x), atol=1e-13)
    # CG: swapping inputs flips the sign of exactly the odd paths
    sign = torch.tensor([(-1.0) ** (l1 + l2 + l3) for l1, l2, l3 in cg.paths], dtype=F64)
    assert torch.allclose(cg(y, x), cg(x, y, path_weights=sign), atol=1e-13)
    assert not torch.allclose(cg(y, x), cg(x, y), atol=1e-3)


def test_lowrank_product_gradcheck_and_gradgradcheck():
    d1, d2, d3, R = 4, 9, 4, 6
    args = [
        _rand(2, 3, d1, seed=14),
        _rand(2, 1, d2, seed=15),
        _rand(d1, R, seed=16),
        _rand(d2, R, seed=17),
        _rand(R, d3, seed=18),
        _rand(2, 3, R, seed=19),
    ]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lowrank_product, args)
    assert torch.autograd.gradgradcheck(lowrank_product, args)


def test_module_dtype_state_dict_and_errors():
    tp = make_tp("gaunt", 2)  # default dtype float32
    assert tp.A.dtype == torch.float32 and tp(torch.randn(3, 2, 9), torch.randn(3, 1, 9)).dtype == torch.float32
    tp2 = make_tp("gaunt", 2)
    tp2.load_state_dict(tp.state_dict())
    assert "A" in tp.state_dict() and "rank=26" in repr(tp)
    with pytest.raises(ValueError, match="unknown tensor product kind"):
        make_tp("fft", 2)
    with pytest.raises(ValueError, match="exact"):
        make_tp("cg", 2, rank=10)
    with pytest.raises(ValueError, match="no default CP rank for L=7"):
        make_tp("cp", 7)
    with pytest.raises(ValueError, match="L_in1 = L_in2 = L_out"):
        make_tp("cp", 2, 1, 2)
    with pytest.raises(ValueError, match="per-path"):
        tp(torch.randn(1, 1, 9), torch.randn(1, 1, 9), path_weights=torch.randn(1, 1, len(tp.paths)))
