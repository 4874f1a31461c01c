"""From invariant node features to energies: readout MLP, scale/shift, per-element reference energies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["ScalarReadout", "ScaleShift", "AtomicReference"]


class ScalarReadout(nn.Module):
    """Per-atom interaction energy from the ``l = 0`` channels: ``Linear -> SiLU -> Linear``.

    Shapes:
        scalars ``[N, C]`` -> ``[N]``.
    """

    def __init__(self, channels: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, scalars: torch.Tensor) -> torch.Tensor:
        return self.net(scalars)[:, 0]


class ScaleShift(nn.Module):
    """``scale * e + shift`` with constants (buffers, saved in the state dict; set from data statistics).

    Shapes:
        e ``[N]`` -> ``[N]``.
    """

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.register_buffer("shift", torch.tensor(float(shift), dtype=torch.float64))

    def set(self, scale: float | None = None, shift: float | None = None) -> None:
        if scale is not None:
            self.scale.fill_(float(scale))
        if shift is not None:
            self.shift.fill_(float(shift))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.scale * e + self.shift

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.6g}, shift={float(self.shift):.6g}"


class AtomicReference(nn.Module):
    """Per-element reference energies ``E0[species]`` (a buffer; elements without a value get 0).

    Args:
        elements: atomic numbers in species-index order.
        e0s: ``{Z: E0}`` in eV (e.g. fitted by :func:`mlip_datasets.stats.fit_e0s`).

    Shapes:
        species ``[N]`` -> ``[N]``.
    """

    def __init__(self, elements: Sequence[int], e0s: Mapping[int, float] | None = None):
        super().__init__()
        self.elements = [int(z) for z in elements]
        self.register_buffer("e0", torch.zeros(len(self.elements), dtype=torch.float64))
        if e0s:
            self.set(e0s)

    def set(self, e0s: Mapping[int, float]) -> None:
        """Replace the references; keys are atomic numbers (ints or digit strings)."""
        e0s = {int(z): float(v) for z, v in e0s.items()}
        extra = sorted(set(e0s) - set(self.elements))
        if extra:
            raise ValueError(f"E0s given for elements {extra} that are not in the model's list {self.elements}")
        values = [e0s.get(z, 0.0) for z in self.elements]
        self.e0.copy_(torch.tensor(values, dtype=torch.float64))

    def as_dict(self) -> dict[int, float]:
        return {z: float(v) for z, v in zip(self.elements, self.e0.tolist())}

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        return self.e0[species]
