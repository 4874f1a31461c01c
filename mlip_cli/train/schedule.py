"""Learning-rate schedules: linear warmup, then cosine decay or reduce-on-plateau (state in plain dicts)."""

from __future__ import annotations

import math

__all__ = ["LRSchedule", "progress_fraction"]


def progress_fraction(step: int, elapsed: float, total_steps: int | None, time_budget: float | None) -> float:
    """How much of the run is used up, for the cosine: ``step / total_steps`` when a step limit is known in
    advance (``max_steps``, or ``max_epochs`` x batches), else ``elapsed / time_budget``; 0 with neither."""
    if total_steps:
        return step / total_steps
    return elapsed / time_budget if time_budget else 0.0


class LRSchedule:
    """``lr(step, progress)``: warmup over ``warmup_steps``, then ``cosine`` / ``plateau`` / ``constant``.

    Cosine decays from ``base_lr`` to ``min_lr_ratio * base_lr`` as ``progress`` goes 0 -> 1 (the trainer
    passes the fraction of its step, epoch or time limit that is used up). Plateau multiplies the rate by
    ``factor`` after ``patience`` validations without improvement, never below ``min_lr_ratio * base_lr``.
    """

    def __init__(
        self,
        base_lr: float,
        kind: str = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        factor: float = 0.5,
        patience: int = 5,
    ):
        self.base_lr, self.kind = float(base_lr), kind
        self.warmup_steps, self.min_lr_ratio = int(warmup_steps), float(min_lr_ratio)
        self.factor, self.patience = float(factor), int(patience)
        self.plateau_scale = 1.0
        self._best = math.inf
        self._bad = 0

    def lr(self, step: int, progress: float) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        floor = self.min_lr_ratio
        if self.kind == "cosine":
            p = min(max(progress, 0.0), 1.0)
            scale = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
        elif self.kind == "plateau":
            scale = max(self.plateau_scale, floor)
        else:
            scale = 1.0
        return self.base_lr * warm * scale

    def observe(self, metric: float) -> None:
        """Feed a validation metric (lower is better); only the plateau schedule reacts."""
        if self.kind != "plateau" or not math.isfinite(metric):
            return
        if metric < self._best * (1 - 1e-4):
            self._best, self._bad = metric, 0
        else:
            self._bad += 1
            if self._bad >= self.patience:
                self.plateau_scale *= self.factor
                self._bad = 0

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": self._best, "bad": self._bad}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self._best = float(state["best"])
        self._bad = int(state["bad"])
