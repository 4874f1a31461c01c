"""``backend="auto"`` trusts the Triton kernels only after they match the torch kernels (checked once per
device, dtype, C and R). Without a GPU the device test is faked and stand-in kernel sets play Triton: one
correct, and broken ones that are wrong, leave outputs unwritten or fail to compile."""

from __future__ import annotations

import warnings

import pytest
import torch

from mlip_kernels import message
from mlip_kernels.message import TorchOps, rank_message, resolve_backend


class CorrectKernels(TorchOps):
    """Right answers by another route (tiny chunks); counts the problems it is given."""

    name = "stand-in"
    calls = 0

    def __init__(self, **options):
        super().__init__(chunk_size=3)

    def message(self, P, u, w, g):
        type(self).calls += 1
        return super().message(P, u, w, g)


class WrongKernels(CorrectKernels):
    """The message off by 1e-3 relative: a kernel that compiles and runs but computes the wrong thing."""

    def message(self, P, u, w, g):
        return super().message(P, u, w, g) * 1.001


class UnwrittenKernels(CorrectKernels):
    """Leaves the edge reductions unwritten (what the poisoned check output shows as NaN)."""

    def contract_both(self, X, Y, u, w, g):
        return X.new_full((g.num_edges, X.shape[2]), float("nan")), X.new_full((g.num_edges, X.shape[1]), 0.0)


class FailingKernels(CorrectKernels):
    def message(self, P, u, w, g):
        raise RuntimeError("PTX assembly failed\n(long compiler log)")


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make "auto" treat CPU tensors as a Triton-capable device, with empty verdicts; returns a setter for
    the kernel set that plays Triton."""
    monkeypatch.setattr(message, "_triton_candidate", lambda device: True)
    monkeypatch.setattr(message, "_TRITON_VERDICTS", {})
    CorrectKernels.calls = 0

    def use(kernels):
        monkeypatch.setattr(message, "_triton_kernels", lambda **options: kernels(**options))

    return use


def _problem(C=3, R=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    P = torch.randn(6, C, R, dtype=torch.float64, generator=gen)
    u = torch.randn(14, R, dtype=torch.float64, generator=gen)
    w = torch.randn(14, C, dtype=torch.float64, generator=gen)
    src, dst = torch.randint(0, 6, (14,), generator=gen), torch.randint(0, 5, (14,), generator=gen)
    return P, u, w, src, dst


def test_auto_is_torch_on_the_cpu_without_a_check(monkeypatch):
    monkeypatch.setattr(message, "_TRITON_VERDICTS", {})
    monkeypatch.setattr(message, "_check_triton", lambda *a: pytest.fail("no check off a Triton device"))
    assert resolve_backend("auto", torch.zeros(0, 3, 5)) == "torch"


def test_auto_uses_kernels_that_pass_and_checks_once_per_shape_class(fake_gpu):
    fake_gpu(CorrectKernels)
    P, u, w, src, dst = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pass warns about nothing
        assert resolve_backend("auto", P) == "triton"
        checks = CorrectKernels.calls
        assert checks >= 2  # the check ran the message forward and (reversed) in the backward
        out = rank_message(P, u, w, src, dst, 6, "auto")
    assert CorrectKernels.calls == checks + 1  # the real call ran the stand-in, and no second check
    torch.testing.assert_close(out, rank_message(P, u, w, src, dst, 6, "naive"), rtol=1e-12, atol=1e-12)
    assert set(message._TRITON_VERDICTS) == {("cpu", torch.float64, 3, 5)}
    # another dtype or (C, R) is another shape class: checked again
    resolve_backend("auto", P.float())
    resolve_backend("auto", torch.zeros(0, 3, 7, dtype=torch.float64))
    assert len(message._TRITON_VERDICTS) == 3 and all(message._TRITON_VERDICTS.values())


@pytest.mark.parametrize(
    "kernels, why",
    [
        (WrongKernels, "output differs by 1.0e-03"),
        (UnwrittenKernels, "grad u has non-finite values"),
        (FailingKernels, "RuntimeError: PTX assembly failed"),
    ],
)
def test_auto_falls_back_to_torch_with_one_warning(fake_gpu, kernels, why):
    fake_gpu(kernels)
    P, u, w, src, dst = _problem()
    with pytest.warns(RuntimeWarning, match="the Triton kernels failed their check") as record:
        out = rank_message(P, u, w, src, dst, 6, "auto")
    assert len(record) == 1 and why in str(record[0].message) and "\n" not in str(record[0].message)
    torch.testing.assert_close(out, rank_message(P, u, w, src, dst, 6, "naive"), rtol=1e-12, atol=1e-12)
    assert {("cpu", torch.float64, 3, 5): False} == message._TRITON_VERDICTS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the verdict is cached: no second check, no second warning
        assert resolve_backend("auto", P) == "torch"
        rank_message(P, u, w, src, dst, 6, "auto")


def test_check_runs_under_no_grad_and_inference_mode(fake_gpu):
    fake_gpu(WrongKernels)
    P = _problem()[0]
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="output differs"):
        assert resolve_backend("auto", P) == "torch"  # the comparison needs autograd, even here
    fake_gpu(CorrectKernels)
    with torch.no_grad():
        assert resolve_backend("auto", torch.zeros(0, 4, 5, dtype=torch.float64)) == "triton"


def test_check_tolerance_follows_the_dtype(fake_gpu):
    """float32 sums in another order differ by ~1e-7: a float32 pass must not need float64 agreement."""

    class Float32Rounding(CorrectKernels):
        def message(self, P, u, w, g):
            out = super().message(P, u, w, g)
            return out * (1 + 1e-6) if out.dtype == torch.float32 else out

    fake_gpu(Float32Rounding)
    assert resolve_backend("auto", torch.zeros(0, 3, 5, dtype=torch.float32)) == "triton"
