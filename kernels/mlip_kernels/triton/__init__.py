"""Triton kernels for the rank-space message (optional; guarded by an import check).

Importing this package never imports Triton's kernels and never fails: ``HAS_TRITON`` says whether the
``triton`` package is importable and :func:`available` whether the kernels can run on a device (a CUDA
GPU, or the CPU under Triton's interpreter, ``TRITON_INTERPRET=1`` set before the kernels are first
used). The kernels module is imported lazily because Triton decides at decoration time whether a kernel
is compiled or interpreted.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["HAS_TRITON", "available", "why_unavailable", "TritonOps"]

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def why_unavailable(device: torch.device | str | None = None) -> str | None:
    """Why the kernels cannot run on ``device`` (default: the current CUDA device), or None if they can."""
    if not HAS_TRITON:
        return "the 'triton' package is not installed (pip install mlip-cli[triton])"
    device = torch.device("cuda" if device is None else device)
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if device.type == "cpu":
        return None if _interpreting() else "CPU tensors need Triton's interpreter (TRITON_INTERPRET=1)"
    return f"device type {device.type!r} is not supported"


def available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernels can run on ``device`` (default: CUDA)."""
    return why_unavailable(device) is None


def __getattr__(name: str):
    # Lazy: TritonOps pulls in triton and defines the @triton.jit kernels only when first asked for.
    if name == "TritonOps":
        if not HAS_TRITON:
            raise ImportError(why_unavailable())
        from .message_kernels import TritonOps

        return TritonOps
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
