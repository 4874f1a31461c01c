"""Rank-space message passing, torch backends: against a dense einsum oracle, gradients of orders 1 and 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from mlip_kernels.message import BACKENDS, rank_message, rank_space_conv, resolve_backend
from mlip_kernels.scatter import MessageGraph, csr_from_index, scatter_sum, torch_scatter_available

# (name, backend, options): the chunked path with a tiny chunk so several chunks and a ragged tail run.
TORCH_VARIANTS = [
    ("naive", "naive", {}),
    ("torch", "torch", {}),
    ("torch-chunk3", "torch", {"chunk_size": 3}),
]


def _inputs(N_src, N_dst, E, C, R, *, dtype=torch.float64, seed=0, dst_high=None, grad=False):
    gen = torch.Generator().manual_seed(seed)
    P = torch.randn(N_src, C, R, dtype=dtype, generator=gen)
    u = torch.randn(E, R, dtype=dtype, generator=gen)
    w = torch.randn(E, C, dtype=dtype, generator=gen)
    src = torch.randint(0, N_src, (E,), generator=gen)
    dst = torch.randint(0, dst_high or N_dst, (E,), generator=gen)
    if grad:
        P, u, w = (t.requires_grad_() for t in (P, u, w))
    return P, u, w, src, dst


def _dense_reference(P, u, w, src, dst, n_out):
    """out[n,c,r] = sum_e [dst_e == n] P[src_e,c,r] u[e,r] w[e,c], via a one-hot incidence matrix."""
    S = torch.nn.functional.one_hot(src, P.shape[0]).to(P.dtype)  # [E, N_src]
    D = torch.nn.functional.one_hot(dst, n_out).to(P.dtype)  # [E, n_out]
    return torch.einsum("es,scr,er,ec,en->ncr", S, P, u, w, D)


@pytest.mark.parametrize("name,backend,opts", TORCH_VARIANTS, ids=[v[0] for v in TORCH_VARIANTS])
@pytest.mark.parametrize("shape", [(6, 6, 13, 5, 7), (4, 9, 30, 3, 1), (7, 3, 50, 8, 28), (1, 1, 5, 2, 3)])
def test_forward_matches_dense_reference(name, backend, opts, shape):
    N_src, N_dst, E, C, R = shape
    P, u, w, src, dst = _inputs(N_src, N_dst, E, C, R, seed=sum(shape))
    out = rank_message(P, u, w, src, dst, N_dst, backend, **opts)
    assert out.shape == (N_dst, C, R)
    torch.testing.assert_close(out, _dense_reference(P, u, w, src, dst, N_dst), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,backend,opts", TORCH_VARIANTS, ids=[v[0] for v in TORCH_VARIANTS])
def test_receivers_without_edges_are_zero(name, backend, opts):
    # Receivers 4..7 get no edge: their rows must be written as zeros, not left as garbage.
    P, u, w, src, dst = _inputs(5, 8, 11, 3, 4, dst_high=4)
    out = rank_message(P, u, w, src, dst, 8, backend, **opts)
    assert torch.all(out[4:] == 0)
    assert torch.all(out[:4].abs().sum((1, 2)) > 0)


@pytest.mark.parametrize("name,backend,opts", TORCH_VARIANTS, ids=[v[0] for v in TORCH_VARIANTS])
def test_empty_edges(name, backend, opts):
    P, u, w, src, dst = _inputs(4, 3, 0, 5, 7, grad=True)
    out = rank_message(P, u, w, src, dst, 3, backend, **opts)
    assert out.shape == (3, 5, 7) and torch.all(out == 0)
    gP, gu, gw = torch.autograd.grad(out.sum(), (P, u, w), allow_unused=True)
    assert gP is None or torch.all(gP == 0)
    assert gu is None or gu.shape == (0, 7)
    assert gw is None or gw.shape == (0, 5)


@pytest.mark.parametrize("name,backend,opts", TORCH_VARIANTS, ids=[v[0] for v in TORCH_VARIANTS])
def test_gradcheck_and_gradgradcheck(name, backend, opts):
    P, u, w, src, dst = _inputs(4, 5, 9, 3, 4, grad=True, dst_high=4)

    def f(P, u, w):
        return rank_message(P, u, w, src, dst, 5, backend, **opts)

    assert gradcheck(f, (P, u, w))
    assert gradgradcheck(f, (P, u, w))


@pytest.mark.parametrize("used", [(0, 1, 2), (1,), (2,), (0, 2)], ids=["all", "u-only", "w-only", "P-w"])
def test_chunked_function_matches_naive_to_second_order(used):
    """Derivatives of orders 1 and 2 of the chunked Functions equal plain autograd of the naive path.

    ``used``: which first-order gradients enter the second-order loss, so the backward of the joint
    u/w reduction also runs with only one of its two outputs carrying a gradient.
    """
    P, u, w, src, dst = _inputs(9, 7, 40, 4, 6, grad=True, seed=3)
    gen = torch.Generator().manual_seed(9)
    G = torch.randn(7, 4, 6, dtype=torch.float64, generator=gen)
    V = [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in (P, u, w)]
    results = []
    for backend, opts in (("naive", {}), ("torch", {"chunk_size": 7})):
        out = rank_message(P, u, w, src, dst, 7, backend, **opts)
        grads = torch.autograd.grad((out * G).sum(), (P, u, w), create_graph=True)
        loss2 = sum((grads[i] * V[i]).sum() for i in used)
        second = torch.autograd.grad(loss2, (P, u, w), allow_unused=True)
        second = [torch.zeros_like(t) if s is None else s for s, t in zip(second, (P, u, w))]
        results.append((out, grads, second))
    (out_a, grads_a, second_a), (out_b, grads_b, second_b) = results
    for a, b in zip((out_a, *grads_a, *second_a), (out_b, *grads_b, *second_b)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_third_order_gradcheck():
    """The Functions are closed under differentiation: a third derivative checks out too."""
    P, u, w, src, dst = _inputs(3, 3, 5, 2, 3, grad=True, seed=4)

    def grad_fn(P, u, w):
        out = rank_message(P, u, w, src, dst, 3, "torch", chunk_size=2)
        return torch.autograd.grad(out.square().sum(), (P, u, w), create_graph=True)

    assert gradgradcheck(grad_fn, (P, u, w))


def test_float32_chunked_matches_naive():
    P, u, w, src, dst = _inputs(64, 64, 700, 16, 50, dtype=torch.float32, seed=5)
    ref = rank_message(P, u, w, src, dst, 64, "naive")
    for chunk in (None, 64, 333):
        torch.testing.assert_close(rank_message(P, u, w, src, dst, 64, "torch", chunk_size=chunk), ref)


def test_graph_reuse_and_transpose():
    P, u, w, src, dst = _inputs(5, 4, 12, 2, 3)
    g = MessageGraph(src, dst, 5, 4)
    out = rank_message(P, u, w, None, None, 4, "torch", graph=g)
    torch.testing.assert_close(out, _dense_reference(P, u, w, src, dst, 4))
    perm, rowptr = g.csr()
    assert torch.equal(dst[perm], torch.sort(dst).values) and rowptr[-1] == 12
    permT, rowptrT = g.T.csr()
    assert torch.equal(src[permT], torch.sort(src).values) and rowptrT.shape == (6,)
    assert g.T.T.csr()[0] is perm  # cache shared by both views
    with pytest.raises(ValueError, match="graph"):
        rank_message(P, u, w, None, None, 5, "torch", graph=g)


def test_shape_and_backend_errors():
    P, u, w, src, dst = _inputs(5, 4, 12, 2, 3)
    with pytest.raises(ValueError, match="u"):
        rank_message(P, u[:, :2], w, src, dst, 4, "torch")
    with pytest.raises(ValueError, match="dtype"):
        rank_message(P, u.float(), w, src, dst, 4, "torch")
    with pytest.raises(ValueError, match="backend"):
        rank_message(P, u, w, src, dst, 4, "cuda-magic")
    assert resolve_backend("auto", P) == "torch"
    assert set(BACKENDS) == {"auto", "torch", "naive", "compile", "triton"}
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(RuntimeError, match="triton"):
            rank_message(P, u, w, src, dst, 4, "triton")


def test_rank_space_conv_equals_per_edge_lowrank_product():
    gen = torch.Generator().manual_seed(1)
    N, E, C, d_in, d_sh, d_out, R = 6, 17, 4, 9, 4, 9, 11
    x = torch.randn(N, C, d_in, dtype=torch.float64, generator=gen)
    Y = torch.randn(E, d_sh, dtype=torch.float64, generator=gen)
    w = torch.randn(E, C, dtype=torch.float64, generator=gen)
    A = torch.randn(d_in, R, dtype=torch.float64, generator=gen)
    B = torch.randn(d_sh, R, dtype=torch.float64, generator=gen)
    Cf = torch.randn(R, d_out, dtype=torch.float64, generator=gen)
    src, dst = torch.randint(0, N, (E,), generator=gen), torch.randint(0, N, (E,), generator=gen)
    per_edge = ((x[src] @ A) * (Y @ B)[:, None, :] * w[:, :, None]) @ Cf  # [E, C, d_out]
    ref = torch.zeros(N, C, d_out, dtype=torch.float64).index_add_(0, dst, per_edge)
    for backend in ("naive", "torch"):
        torch.testing.assert_close(rank_space_conv(x, A, Y, B, w, src, dst, Cf, N, backend), ref)


def test_scatter_sum():
    gen = torch.Generator().manual_seed(2)
    vals = torch.randn(10, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    index = torch.tensor([0, 2, 2, 5, 0, 1, 5, 5, 2, 0])
    out = scatter_sum(vals, index, 7)
    ref = torch.stack([vals[index == i].sum(0) for i in range(7)])
    torch.testing.assert_close(out, ref)
    assert torch.all(out[[3, 4, 6]] == 0)
    assert gradgradcheck(lambda v: scatter_sum(v, index, 7), (vals,))
    with pytest.raises(ValueError, match="backend"):
        scatter_sum(vals, index, 7, backend="bogus")
    if torch_scatter_available():
        torch.testing.assert_close(scatter_sum(vals, index, 7, backend="torch_scatter"), ref)
    else:
        with pytest.raises(ImportError, match="torch_scatter"):
            scatter_sum(vals, index, 7, backend="torch_scatter")


def test_csr_from_index_empty_and_unsorted():
    perm, rowptr = csr_from_index(torch.tensor([3, 0, 3, 1]), 5)
    assert rowptr.tolist() == [0, 1, 2, 2, 4, 4] and perm.tolist() == [1, 3, 0, 2]
    perm, rowptr = csr_from_index(torch.zeros(0, dtype=torch.long), 3)
    assert perm.numel() == 0 and rowptr.tolist() == [0, 0, 0, 0]


def test_imports_cleanly_without_triton():
    """With `triton` unimportable, the package and the torch path still work and report why Triton can't."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, mlip_kernels.triton as t, mlip_kernels.message as m\n"
        "assert not t.HAS_TRITON and not t.available() and 'not installed' in t.why_unavailable()\n"
        "P = torch.ones(2, 1, 1); u = torch.ones(1, 1); w = torch.ones(1, 1)\n"
        "i = torch.zeros(1, dtype=torch.long)\n"
        "assert m.rank_message(P, u, w, i, i, 2).sum().item() == 1\n"
        "try:\n    m.rank_message(P, u, w, i, i, 2, 'triton')\nexcept RuntimeError as e:\n    print('ok', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok") and "not installed" in res.stdout


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's inductor imports
def test_compile_backend_matches_naive_to_second_order():
    """The opt-in inductor kernels inside the same Functions (compiles once, about 10-20 s)."""
    pytest.importorskip("torch._inductor")
    P, u, w, src, dst = _inputs(6, 5, 23, 3, 7, grad=True, seed=6, dst_high=4)
    gen = torch.Generator().manual_seed(8)
    G = torch.randn(5, 3, 7, dtype=torch.float64, generator=gen)
    V = [torch.randn(t.shape, dtype=t.dtype, generator=gen) for t in (P, u, w)]
    results = []
    for backend, opts in (("naive", {}), ("compile", {"fused_message": True}), ("compile", {"fused_message": False})):
        out = rank_message(P, u, w, src, dst, 5, backend, **opts)
        grads = torch.autograd.grad((out * G).sum(), (P, u, w), create_graph=True)
        second = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, V)), (P, u, w))
        results.append([out, *grads, *second])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
