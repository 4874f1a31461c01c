"""Building blocks: the three edge convolutions against references, block equivariance, the cutoff envelope."""

from __future__ import annotations

import pytest
import torch
from models_testlib import FAMILIES

from mlip_cli.nn import EdgeConvolution, EquivariantLinear, Gate, InteractionBlock, PolynomialEnvelope
from mlip_kernels.cg import cg_tensor_product
from mlip_kernels.scatter import MessageGraph, scatter_sum
from mlip_kernels.sh import spherical_harmonics
from mlip_kernels.tp import make_tp
from mlip_kernels.wigner import random_rotation, wigner_D_blocks

L, C, N, E = 2, 5, 7, 30


def _edges(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, (L + 1) ** 2, dtype=torch.float64, generator=g)
    vec = torch.randn(E, 3, dtype=torch.float64, generator=g)
    w = torch.randn(E, C, dtype=torch.float64, generator=g)
    src = torch.randint(0, N, (E,), generator=g)
    dst = torch.randint(0, N - 1, (E,), generator=g)  # node N-1 receives nothing
    return x, vec, w, MessageGraph(src, dst, N, N)


def _conv(tp):
    return EdgeConvolution(tp, L).to(torch.float64)


def test_cg_conv_equals_per_path_reference():
    x, vec, w, g = _edges()
    Y = spherical_harmonics(vec, L)
    ref = scatter_sum(cg_tensor_product(x[g.src], Y[:, None, :], L, L, L) * w[:, :, None], g.dst, N)
    torch.testing.assert_close(_conv("cg")(x, Y, w, g), ref, rtol=1e-12, atol=1e-12)


def test_tdn_conv_equals_cg_conv():
    """Same function, computed two ways (rank space vs dense per edge): to the CP error (~1e-13 at L=2)."""
    x, vec, w, g = _edges(1)
    Y = spherical_harmonics(vec, L)
    tdn = _conv("tdn")
    assert tdn.rel_error < 1e-12 and tdn.rank == 30
    out = tdn(x, Y, w, g)
    assert torch.all(out[N - 1] == 0)
    torch.testing.assert_close(out, _conv("cg")(x, Y, w, g), rtol=1e-10, atol=1e-10)


def test_gaunt_conv_equals_per_edge_gaunt_product():
    x, vec, w, g = _edges(2)
    Y = spherical_harmonics(vec, L)
    tp = make_tp("gaunt", L, dtype=torch.float64)
    ref = scatter_sum(tp(x[g.src], Y[:, None, :], weights=w), g.dst, N)
    torch.testing.assert_close(_conv("gaunt")(x, Y, w, g), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_interaction_block_is_equivariant(family):
    """Features after a block rotate with the Wigner matrices (the energy alone can hide l > 0 errors)."""
    torch.manual_seed(0)
    block = InteractionBlock(C, L, num_elements=3, tp=family, num_radial=4, radial_hidden=8,
                             avg_num_neighbors=4.0).to(torch.float64)
    x, vec, _, g = _edges(3)
    species = torch.randint(0, 3, (N,))
    R = random_rotation(generator=torch.Generator().manual_seed(4))
    D = wigner_D_blocks(L, R)

    def run(x, vec):
        r = vec.norm(dim=-1) * 0.5  # keep edges inside the default cutoff below
        env = PolynomialEnvelope(3.0)(r)
        basis = torch.stack([torch.sin(k * r) for k in range(1, 5)], dim=-1)
        return block(x, species, spherical_harmonics(vec, L), basis, env, g)

    out = run(x, vec)
    assert out[:, :, 1:].abs().max() > 1e-2
    torch.testing.assert_close(run(x @ D.T, vec @ R.T), out @ D.T, rtol=0, atol=1e-10 * out.abs().max().item())


def test_linear_and_gate_commute_with_rotations():
    torch.manual_seed(0)
    x = torch.randn(N, C, (L + 1) ** 2, dtype=torch.float64)
    D = wigner_D_blocks(L, random_rotation(generator=torch.Generator().manual_seed(5)))
    for layer in (EquivariantLinear(C, 3, L).double(), Gate(C, L).double()):
        torch.testing.assert_close(layer(x @ D.T), layer(x) @ D.T, rtol=1e-12, atol=1e-12)


def test_envelope_is_smooth_at_cutoff():
    env = PolynomialEnvelope(4.0, p=6)
    r = torch.tensor([0.0, 4.0 - 1e-4, 4.0, 4.5], dtype=torch.float64, requires_grad=True)
    u = env(r)
    (du,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), r)
    assert u[0] == 1 and u[2] == 0 and u[3] == 0
    assert abs(u[1]) < 1e-9 and abs(du[1]) < 1e-6 and abs(d2u[1]) < 1e-3
    assert du[2] == 0 and d2u[2] == 0
