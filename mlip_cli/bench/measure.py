"""Measurements for ``mlip bench tp``: peak memory, reference CG convolution, equivariance and accuracy.

Errors are measured in float64 on a small sub-graph, separately from the timed dtype, so they show the
math (exact products give ~1e-15, a CP fit its fit error) and not float32 rounding.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "PEAK_MEM_METHOD",
    "PeakTensorBytes",
    "peak_memory_mb",
    "path_weights",
    "reference_conv",
    "equivariance_error",
    "relative_error",
]

PEAK_MEM_METHOD = {
    "cpu": "peak total bytes of tensor storages created by aten ops during one forward+backward call and "
    "alive at the same time (tracked per op by a TorchDispatchMode; inputs, allocator caching and "
    "scratch memory inside a single kernel not counted)",
    "cuda": "torch.cuda.max_memory_allocated during one forward+backward call, minus the allocation before it",
}


class PeakTensorBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created inside the mode (peak in ``.peak``).

    CPU torch has no allocator statistics, and RSS is blurred by the allocator's caching and by other
    threads, so this counts what autograd and the kernels actually keep alive: every op's outputs are
    recorded by storage (views and in-place ops are not counted twice) and released when freed.
    """

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self._live:
                    self._live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_memory_mb(fn, device: torch.device) -> float:
    """Run ``fn`` once and return its peak memory in MB (method: :data:`PEAK_MEM_METHOD`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 1e6
    with PeakTensorBytes() as tracker:
        fn()
    return tracker.peak / 1e6


def path_weights(L: int, which: str) -> torch.Tensor | None:
    """Per-path weights that make the CG product equal another product on ``tp_paths(L, L, L)``.

    Args:
        which: ``"all"`` (None: every path, weight 1), ``"even"`` (1 on ``l1+l2+l3`` even paths, else 0)
            or ``"gaunt"`` (the Gaunt product: each Gaunt block is a multiple of the CG block,
            ``G_p = g_p CG_p``, and ``g_p = 0`` on odd paths).
    """
    from mlip_kernels.cg import tp_paths
    from mlip_kernels.wigner import clebsch_gordan, gaunt_coefficients

    if which == "all":
        return None
    paths = tp_paths(L, L, L)
    if which == "even":
        return torch.tensor([float((a + b + c) % 2 == 0) for a, b, c in paths], dtype=torch.float64)
    if which == "gaunt":
        ws = []
        for p in paths:
            cg, g = clebsch_gordan(*p), gaunt_coefficients(*p)
            ws.append(float((g * cg).sum() / (cg * cg).sum()))
        return torch.tensor(ws, dtype=torch.float64)
    raise ValueError(f"unknown path set {which!r}")


def reference_conv(x, Y, w, src, dst, n_nodes: int, L: int, which: str = "all") -> torch.Tensor:
    """The oracle: ``mlip_kernels.cg.cg_tensor_product`` on every edge, weighted, summed per receiver.

    Shapes:
        x ``[N, C, d]``, Y ``[E, d]``, w ``[E, C]``, src/dst ``[E]`` -> ``[n_nodes, C, d]``.
    """
    from mlip_kernels.cg import cg_tensor_product

    pw = path_weights(L, which)
    pw = None if pw is None else pw.to(dtype=x.dtype, device=x.device)
    m = cg_tensor_product(x[src], Y[:, None, :], L, L, L, path_weights=pw) * w[:, :, None]
    return x.new_zeros(n_nodes, *x.shape[1:]).index_add(0, dst, m)


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref|| / ||ref||`` (Frobenius)."""
    return float((a - ref).norm() / ref.norm())


def equivariance_error(conv, x, vec, w, L: int, rotations: int, generator: torch.Generator) -> float:
    """Largest ``||f(D x, Y(R r), w) - D f(x, Y(r), w)|| / ||f(x, Y(r), w)||`` over random rotations ``R``.

    ``conv(x, Y, w) -> [N, C, d]``; ``D`` is the block Wigner matrix of ``R`` applied to every node.

    Shapes:
        x ``[N, C, d]``, vec ``[E, 3]`` (edge vectors), w ``[E, C]``.
    """
    from mlip_kernels.sh import spherical_harmonics
    from mlip_kernels.wigner import random_rotation, wigner_D_blocks

    out = conv(x, spherical_harmonics(vec, L), w)
    worst = 0.0
    for R in random_rotation(rotations, generator=generator).to(x):
        D = wigner_D_blocks(L, R)
        out_rot = conv(x @ D.T, spherical_harmonics(vec @ R.T, L), w)
        worst = max(worst, relative_error(out_rot, out @ D.T))
    return worst
