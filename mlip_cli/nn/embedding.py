"""Elements: atomic number -> species index, and the learned species embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ElementTable", "ElementEmbedding", "MAX_Z"]

MAX_Z = 118


class ElementTable(nn.Module):
    """Maps atomic numbers to species indices ``0..num_elements-1`` in the order of ``elements``.

    Shapes:
        numbers ``[N]`` int64 -> ``[N]`` int64.
    """

    def __init__(self, elements: Sequence[int]):
        super().__init__()
        elements = [int(z) for z in elements]
        if not elements:
            raise ValueError("the model needs at least one element")
        bad = [z for z in elements if not 1 <= z <= MAX_Z]
        if bad:
            raise ValueError(f"atomic numbers must be in 1..{MAX_Z}, got {bad}")
        if len(set(elements)) != len(elements):
            raise ValueError(f"duplicate elements in {elements}")
        self.elements = elements
        table = torch.full((MAX_Z + 1,), -1, dtype=torch.long)
        table[torch.tensor(elements)] = torch.arange(len(elements))
        self.register_buffer("z_to_index", table, persistent=False)
        # Whether forward() checks the numbers (data-dependent Python branches). mlip_cli.export turns it off to
        # trace the model with symbolic sizes; unknown elements then map to species 0 and the exported graph
        # makes the outputs NaN instead.
        self.check_numbers = True

    @property
    def num_elements(self) -> int:
        return len(self.elements)

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        numbers = numbers.long()
        if not self.check_numbers:
            return self.z_to_index[numbers].clamp(min=0)
        if numbers.numel() and (int(numbers.min()) < 0 or int(numbers.max()) > MAX_Z):
            raise ValueError(f"atomic numbers outside 0..{MAX_Z} in the input")
        idx = self.z_to_index[numbers]
        if bool((idx < 0).any()):  # a user error (data with an element the model was not built for)
            unknown = sorted(set(numbers[idx < 0].tolist()))
            raise ValueError(f"elements {unknown} are not in the model's element list {self.elements}")
        return idx


class ChargeSpinEmbedding(nn.Module):
    """Total charge and spin multiplicity of each structure -> a vector added to every atom's initial scalar
    features, so one model fits the same geometry at several charge and spin states (OMol25's labels depend on both).

    The last layer starts at zero: a new model predicts as its charge-blind counterpart until training says
    otherwise. A structure that gives no charge counts as neutral, one that gives no spin as a singlet.

    Shapes:
        charge, spin ``[B]``, charge_mask, spin_mask ``[B]`` bool -> ``[B, channels]``.
    """

    def __init__(self, channels: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, channels))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(
        self, charge: torch.Tensor, spin: torch.Tensor, charge_mask: torch.Tensor, spin_mask: torch.Tensor
    ) -> torch.Tensor:
        dtype = self.net[0].weight.dtype
        q = torch.where(charge_mask, charge.to(dtype), torch.zeros_like(charge, dtype=dtype))
        s = torch.where(spin_mask, spin.to(dtype), torch.ones_like(spin, dtype=dtype))
        return self.net(torch.stack([q, s - 1.0], dim=-1))


class ElementEmbedding(nn.Module):
    """Learned initial scalar features per species (a linear map of the one-hot species).

    Shapes:
        species ``[N]`` int64 -> ``[N, channels]``.
    """

    def __init__(self, num_elements: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_elements, channels))

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        return self.weight[species]
