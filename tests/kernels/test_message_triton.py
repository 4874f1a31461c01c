"""Triton message kernels against their torch twin, on the CPU through Triton's interpreter.

Triton decides at kernel-definition time whether a kernel is compiled or interpreted, so
``TRITON_INTERPRET=1`` must be set before the kernels module is first imported, and must not leak into
other tests. This file therefore runs all comparisons in one child process (this same file run as a
script with the variable set) and each pytest case checks the child's verdict for one case.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

# name: (N_src, N_dst, E, C, R, dtype, triton options, receivers that get edges (None: all))
CASES = {
    "odd-sizes-small-blocks-f64": (6, 6, 13, 5, 7, "float64", {"block_c": 4, "block_r": 4}, None),
    "odd-sizes-default-blocks-f32": (6, 6, 13, 5, 7, "float32", {}, None),
    "isolated-receivers-f64": (5, 9, 11, 3, 6, "float64", {"block_c": 2, "block_r": 4}, 4),
    "bipartite-c-over-block-f32": (7, 4, 20, 33, 9, "float32", {}, None),
    "rank-one-f64": (3, 4, 6, 2, 1, "float64", {"block_c": 2, "block_r": 1}, None),
    "no-edges-f64": (4, 3, 0, 5, 7, "float64", {"block_c": 4, "block_r": 4}, None),
}
GRADCHECK = ["gradcheck", "gradgradcheck"]
AUTO = ["auto-check-passes"]


@pytest.fixture(scope="module")
def child_results():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    verdicts = {}
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            verdicts[rec["case"]] = rec
    if not verdicts:
        pytest.fail(f"interpreter child produced no results (rc={res.returncode}):\n{res.stderr[-4000:]}")
    return verdicts, res.stderr[-4000:]


@pytest.mark.parametrize("case", list(CASES) + GRADCHECK + AUTO)
def test_triton_matches_torch_twin(child_results, case):
    verdicts, stderr = child_results
    assert case in verdicts, f"child did not report case {case!r}:\n{stderr}"
    assert verdicts[case]["ok"], verdicts[case]["detail"]


# ---------------------------------------------------------------- child process (TRITON_INTERPRET=1)


def _random_inputs(N_src, N_dst, E, C, R, dtype, receivers, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, dtype=dtype, generator=gen).requires_grad_()  # noqa: E731
    P, u, w = mk(N_src, C, R), mk(E, R), mk(E, C)
    src = torch.randint(0, N_src, (E,), generator=gen)
    dst = torch.randint(0, receivers or N_dst, (E,), generator=gen)
    return P, u, w, src, dst, gen


def _compare_case(spec, seed):
    """Forward, first and second derivatives of Triton vs the torch twin; outputs poisoned with NaN."""
    import torch

    from mlip_kernels.message import rank_message

    N_src, N_dst, E, C, R, dtype, opts, receivers = spec
    dtype = getattr(torch, dtype)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    P, u, w, src, dst, gen = _random_inputs(N_src, N_dst, E, C, R, dtype, receivers, seed)
    G = torch.randn(N_dst, C, R, dtype=dtype, generator=gen)
    V = [torch.randn(t.shape, dtype=dtype, generator=gen) for t in (P, u, w)]
    got = {}
    for backend, kw in (("triton", dict(opts, poison=True)), ("torch", {})):
        out = rank_message(P, u, w, src, dst, N_dst, backend, **kw)
        grads = torch.autograd.grad((out * G).sum(), (P, u, w), create_graph=True)
        second = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, V)), (P, u, w), allow_unused=True)
        second = [torch.zeros_like(t) if s is None else s for s, t in zip(second, (P, u, w))]
        got[backend] = [out, *grads, *second]
    names = ["out", "grad_P", "grad_u", "grad_w", "gradgrad_P", "gradgrad_u", "gradgrad_w"]
    for name, a, b in zip(names, got["triton"], got["torch"]):
        if not torch.isfinite(a).all():
            return False, f"{name}: non-finite values (an output was not written)"
        try:
            torch.testing.assert_close(a, b, **tol)
        except AssertionError as e:
            return False, f"{name}: {e}"
    return True, ""


def _gradchecks():
    import torch
    from torch.autograd import gradcheck, gradgradcheck

    from mlip_kernels.message import rank_message

    P, u, w, src, dst, _ = _random_inputs(3, 4, 5, 3, 3, torch.float64, 3, seed=11)
    f = lambda P, u, w: rank_message(P, u, w, src, dst, 4, "triton", block_c=2, block_r=2)  # noqa: E731
    # fast_mode: random projections of the Jacobians, since every interpreted launch costs milliseconds.
    yield "gradcheck", lambda: gradcheck(f, (P, u, w), fast_mode=True)
    yield "gradgradcheck", lambda: gradgradcheck(f, (P, u, w), fast_mode=True)


def _auto_check():
    """The real kernels pass "auto"'s check (the device test faked to accept the interpreted CPU)."""
    import warnings

    import torch

    from mlip_kernels import message

    message._triton_candidate = lambda device: True
    P, u, w, src, dst, _ = _random_inputs(5, 4, 9, 3, 6, torch.float64, None, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = message.resolve_backend("auto", P)
        out = message.rank_message(P, u, w, src, dst, 4, "auto")
    ref = message.rank_message(P, u, w, src, dst, 4, "torch")
    if backend != "triton" or {("cpu", torch.float64, 3, 6): True} != message._TRITON_VERDICTS:
        return False, f"auto chose {backend!r}, verdicts {message._TRITON_VERDICTS}"
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    return True, ""


def _child_main():
    import traceback

    import torch

    torch.set_num_threads(1)
    from mlip_kernels import triton as tri

    assert tri.available("cpu"), tri.why_unavailable("cpu")
    jobs = [(name, lambda s=spec, i=i: _compare_case(s, seed=100 + i)) for i, (name, spec) in enumerate(CASES.items())]
    jobs += [(name, (lambda fn=fn: (fn(), ""))) for name, fn in _gradchecks()]
    jobs += [("auto-check-passes", _auto_check)]
    for name, job in jobs:
        try:
            ok, detail = job()
        except Exception:  # report, keep going: each case is its own pytest verdict
            ok, detail = False, traceback.format_exc()
        print(json.dumps({"case": name, "ok": bool(ok), "detail": detail}), flush=True)


if __name__ == "__main__":
    _child_main()
