"""Shared benchmark helpers: wall-clock timing, machine description, and the e3nn peer.

The e3nn peer is the channel-wise (``uvu``) convolution tensor product of a MACE/NequIP interaction:
``64x(0e+1o+2e+...)`` node features x ``1x(0e+1o+2e+...)`` edge harmonics -> ``64x(0e+1o+2e+...)``, every
parity-allowed path (``l1+l2+l3`` even, since inputs and output have the natural parity ``(-1)^l``), one
weight per edge, path and channel (``shared_weights=False``). e3nn is optional: import it only through
:func:`e3nn_version` / :func:`e3nn_uvu_tp`.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["best_of", "machine_info", "e3nn_version", "e3nn_uvu_tp", "e3nn_paths", "to_e3nn_layout", "from_e3nn_layout"]


def best_of(
    fn: Callable[[], object],
    *,
    repeats: int = 3,
    warmup: int = 1,
    min_time: float = 0.0,
    max_repeats: int = 30,
    sync: Callable[[], None] | None = None,
) -> tuple[float, float, int]:
    """Time ``fn``: ``warmup`` untimed calls, then at least ``repeats`` timed calls, continuing while
    their total is under ``min_time`` seconds (at most ``max_repeats``).

    The best time is the least disturbed by other load on a shared machine; the median comes alongside.

    Args:
        sync: called before reading the clock (``torch.cuda.synchronize`` for GPU work).

    Returns:
        ``(best_ms, median_ms, n_timed)``.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    ts: list[float] = []
    while len(ts) < max(1, repeats) or (sum(ts) < min_time and len(ts) < max_repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3, statistics.median(ts) * 1e3, len(ts)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> dict:
    """The measured code: git commit of the checkout the packages are imported from (None outside one), whether
    they differ from it, and a hash of the three packages as they are on disk (numbers from a dirty tree compare
    only with the same hash)."""
    import hashlib
    import subprocess

    import mlip_cli
    import mlip_datasets
    import mlip_kernels

    packages = [Path(m.__file__).resolve().parent for m in (mlip_cli, mlip_kernels, mlip_datasets)]
    checkout = packages[0].parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    digest = hashlib.sha256()
    for package in packages:
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(package.parent)).encode())
                digest.update(path.read_bytes())
    commit = git("rev-parse", "HEAD").strip()
    return {
        "commit": commit or None,
        "dirty": bool(git("status", "--porcelain", "--", *map(str, packages)).strip()) if commit else None,
        "sources_sha256": digest.hexdigest()[:16],
    }


def machine_info(device: str = "cpu") -> dict:
    """What ran the benchmark: platform, CPU model, core count, torch threads, load average, GPU."""
    import torch

    info = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
        info["cuda_capability"] = f"{props.major}.{props.minor}"
        info["cuda_version"] = torch.version.cuda
    return info


def e3nn_version() -> str | None:
    """The installed e3nn version, or None if e3nn is not installed."""
    if importlib.util.find_spec("e3nn") is None:
        return None
    import e3nn

    return e3nn.__version__


def e3nn_uvu_tp(L: int, channels: int, *, match_cg: bool = False):
    """The e3nn ``uvu`` convolution tensor product at degree ``L`` (see module docstring).

    Args:
        match_cg: use no e3nn normalisation and path weights ``sqrt(2 l3 + 1)`` so the product equals
            :func:`mlip_kernels.cg.cg_tensor_product` restricted to the even paths, with every path weight
            equal to the edge's channel weight (e3nn multiplies by the square root of an instruction's
            ``path_weight``, hence ``2 l3 + 1``). Only constants change, not the work.
    """
    from e3nn import o3

    sh = o3.Irreps.spherical_harmonics(L)
    feat = o3.Irreps([(channels, ir) for _, ir in sh])
    instr = [
        (i1, i2, io, "uvu", True) + ((float(2 * iro.l + 1),) if match_cg else ())
        for i1, (_, ir1) in enumerate(feat)
        for i2, (_, ir2) in enumerate(sh)
        for io, (_, iro) in enumerate(feat)
        if iro in ir1 * ir2
    ]
    norm = dict(irrep_normalization="none", path_normalization="none") if match_cg else {}
    return o3.TensorProduct(feat, sh, feat, instr, shared_weights=False, internal_weights=False, **norm)


def e3nn_paths(tp) -> list[tuple[int, int, int]]:
    """``(l1, l2, l3)`` of each instruction of an e3nn tensor product."""
    return [
        (tp.irreps_in1[i.i_in1].ir.l, tp.irreps_in2[i.i_in2].ir.l, tp.irreps_out[i.i_out].ir.l) for i in tp.instructions
    ]


def to_e3nn_layout(x, L: int):
    """Our ``[N, C, d]`` features -> e3nn's ``[N, sum_l C (2l+1)]`` (channel-major inside each degree)."""
    import torch

    return torch.cat([x[:, :, l * l : (l + 1) ** 2].reshape(x.shape[0], -1) for l in range(L + 1)], -1)


def from_e3nn_layout(z, L: int, channels: int):
    """e3nn's ``[N, sum_l C (2l+1)]`` -> our ``[N, C, d]``."""
    import torch

    parts, offset = [], 0
    for l in range(L + 1):
        n = channels * (2 * l + 1)
        parts.append(z[:, offset : offset + n].reshape(z.shape[0], channels, 2 * l + 1))
        offset += n
    return torch.cat(parts, -1)
