"""Exponential moving average of a model's weights, kept in a second copy of the model."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``ema <- d * ema + (1 - d) * weights`` after every step, ``d = min(decay, (1 + n) / (10 + n))``.

    The ramp keeps the average from being dominated by the random initial weights early on. Buffers are
    copied, not averaged. ``module`` is an ordinary model in eval mode: validate and export it directly.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict, weights: dict) -> None:
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(weights)
