"""Building blocks: the three edge convolutions against references, block equivariance, the cutoff envelope."""

from __future__ import annotations

import pytest
import torch

from mlip_cli.nn import (
    TP_KINDS,
    EdgeConvolution,
    ElementLinear,
    EquivariantLinear,
    Gate,
    InteractionBlock,
    PolynomialEnvelope,
)
from mlip_cli.nn.radial import reverse_pairs
from mlip_kernels.cg import cg_tensor_product, tp_paths
from mlip_kernels.cp import default_rank
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
    """The per-path reference with weight 1 on the even paths (l1+l2+l3 even) and 0 on the odd ones."""
    x, vec, w, g = _edges()
    Y = spherical_harmonics(vec, L)
    even = torch.tensor([float((a + b + c) % 2 == 0) for a, b, c in tp_paths(L, L, L)], dtype=torch.float64)
    assert 0 < even.sum() < len(even)  # L = 2 has odd paths (e.g. 1 x 1 -> 1) to leave out
    ref = scatter_sum(cg_tensor_product(x[g.src], Y[:, None, :], L, L, L, path_weights=even) * w[:, :, None], g.dst, N)
    torch.testing.assert_close(_conv("cg")(x, Y, w, g), ref, rtol=1e-12, atol=1e-12)


def test_tdn_conv_equals_cg_conv():
    """Same function, computed two ways (rank space vs dense per edge): to the CP error (~1e-15 at L=2)."""
    x, vec, w, g = _edges(1)
    Y = spherical_harmonics(vec, L)
    tdn = _conv("tdn")
    assert tdn.rel_error < 1e-12 and tdn.rank == default_rank(2, "even")  # the shipped exact even-path rank
    out = tdn(x, Y, w, g)
    assert torch.all(out[N - 1] == 0)
    torch.testing.assert_close(out, _conv("cg")(x, Y, w, g), rtol=1e-10, atol=1e-10)


def test_gaunt_conv_equals_per_edge_gaunt_product():
    x, vec, w, g = _edges(2)
    Y = spherical_harmonics(vec, L)
    tp = make_tp("gaunt", L, dtype=torch.float64)
    ref = scatter_sum(tp(x[g.src], Y[:, None, :], weights=w), g.dst, N)
    torch.testing.assert_close(_conv("gaunt")(x, Y, w, g), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tp", TP_KINDS)
def test_interaction_block_is_equivariant(tp):
    """Features after a block rotate with the Wigner matrices (the energy alone can hide l > 0 errors)."""
    torch.manual_seed(0)
    block = InteractionBlock(C, L, num_elements=3, tp=tp, num_radial=4, radial_hidden=8, avg_num_neighbors=4.0).to(
        torch.float64
    )
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


def _block_inputs(seed=3):
    x, vec, _, g = _edges(seed)
    species = torch.randint(0, 3, (N,), generator=torch.Generator().manual_seed(seed))
    r = vec.norm(dim=-1) * 0.5
    basis = torch.stack([torch.sin(k * r) for k in range(1, 5)], dim=-1)
    return x, species, spherical_harmonics(vec, L), basis, PolynomialEnvelope(3.0)(r), g


@pytest.mark.parametrize("tp", TP_KINDS)
@pytest.mark.parametrize("ends", [(0, L), (L, 0), (0, 0)], ids=["scalar-in", "scalar-out", "scalars"])
def test_scalar_end_block_equals_full_block(tp, ends):
    """A block with a scalar input (first block) or output (last block) is the full block restricted to the
    degrees that exist: same output as the full block fed zeros in l > 0 / read only at l = 0."""
    lmax_in, lmax_out = ends
    torch.manual_seed(0)
    opts = dict(num_radial=4, radial_hidden=8, avg_num_neighbors=4.0)
    full = InteractionBlock(C, L, 3, tp, **opts).to(torch.float64)
    part = InteractionBlock(C, L, 3, tp, lmax_in=lmax_in, lmax_out=lmax_out, **opts).to(torch.float64)
    d_in, d_out, d_min = (lmax_in + 1) ** 2, (lmax_out + 1) ** 2, (min(ends) + 1) ** 2
    assert part.conv.rank in (None, (L + 1) ** 2 if d_in != d_out else 1)
    with torch.no_grad():  # the part's parameters are the full block's at the degrees it keeps
        for name, p in part.named_parameters():
            q = full.get_parameter(name)
            if name.startswith("linear_in"):
                q = q[: lmax_in + 1]
            elif name.startswith("linear_out"):
                q = q[: lmax_out + 1]
            elif name.startswith("self_connection"):
                q = q[:, : min(ends) + 1]
            elif name.startswith("gate"):
                q = q[: p.shape[0]]
            p.copy_(q)
    x, species, Y, basis, env, g = _block_inputs()
    x = x[:, :, :d_in]
    x_full = torch.cat([x, x.new_zeros(N, C, (L + 1) ** 2 - d_in)], dim=2)
    out = part(x, species, Y, basis, env, g)
    ref = full(x_full, species, Y, basis, env, g)[:, :, :d_out]
    assert out.shape == (N, C, d_out) and d_min <= d_out
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10 * ref.abs().max().item())


@pytest.mark.parametrize("num_elements", [3, 20], ids=["one-hot", "gather"])
def test_element_linear_equals_per_atom_matrices(num_elements):
    """Both ways of computing the self-connection (few species: one-hot GEMM; many: per-node gather)
    equal applying each atom's own matrix W[s_n, l] / sqrt(C) degree by degree."""
    torch.manual_seed(1)
    layer = ElementLinear(C, 4, L, num_elements).double()
    x = torch.randn(N, C, (L + 1) ** 2, dtype=torch.float64)
    species = torch.randint(0, num_elements, (N,))
    ref = torch.zeros(N, 4, (L + 1) ** 2, dtype=torch.float64)
    for n in range(N):
        for l in range(L + 1):
            sl = slice(l * l, (l + 1) ** 2)
            ref[n, :, sl] = layer.weight[species[n], l].T @ x[n, :, sl] / C**0.5
    torch.testing.assert_close(layer(x, species), ref, rtol=1e-12, atol=1e-12)


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


@pytest.mark.parametrize("name", ["bulk", "slab", "molecule"])
def test_reverse_pairs_groups_each_edge_with_its_twin(name, graphs):
    """Symmetric neighbour lists: every group is an edge i -> j and its twin j -> i with the negated vector
    (periodic self-images included); dropping an edge leaves its twin alone, nothing else changes."""
    g = graphs[name]
    src, dst = g.edge_index
    cell_vec = g.shifts @ g.cell
    vec = g.positions[dst] - g.positions[src] + cell_vec
    rep, group = reverse_pairs(src, dst, vec, g.natoms)
    E = src.shape[0]
    assert rep.shape == (E // 2,) and group.shape == (E,)
    assert torch.equal(rep[group[rep]], rep) and torch.all(rep[group] <= torch.arange(E))
    twin = torch.full((E,), -1)
    for k in range(rep.shape[0]):  # each group holds exactly two edges, reverses of each other
        members = torch.nonzero(group == k)[:, 0]
        assert members.shape == (2,)
        a, b = members.tolist()
        assert src[a] == dst[b] and dst[a] == src[b] and torch.equal(vec[a], -vec[b])
        twin[a], twin[b] = b, a
    r = vec.norm(dim=1)
    assert torch.equal(r[rep][group], r)
    keep = torch.arange(E) != 5
    rep2, group2 = reverse_pairs(src[keep], dst[keep], vec[keep], g.natoms)
    assert rep2.shape == (E // 2,)
    alone = int(twin[5]) - (1 if twin[5] > 5 else 0)  # the twin's index after dropping edge 5
    assert (group2 == group2[alone]).sum() == 1
