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

    ``horizon`` is the limit the progress is measured against (saved with the state). When a resumed run has
    another one, :meth:`replan` continues the cosine from the rate reached, down to the floor at the new end:
    the rate never rises again, and an unchanged horizon resumes exactly.
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
        self.horizon: dict | None = None
        self.anchor: tuple[float, float] | None = None
        """``(progress, cosine scale)`` where a resume re-planned the decay (None: the original cosine)."""

    def _cosine(self, progress: float) -> float:
        floor = self.min_lr_ratio
        p = min(max(progress, 0.0), 1.0)
        start, top = (0.0, 1.0) if self.anchor is None or p < self.anchor[0] else self.anchor
        if start >= 1.0:
            return floor
        p = (p - start) / (1.0 - start)
        return floor + (top - floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    def replan(self, before: float, after: float) -> None:
        """The horizon changed at a point that was ``before`` of the old one and is ``after`` of the new one:
        decay from the scale reached at ``before`` to the floor over what is left of the new horizon."""
        self.anchor = (float(after), self._cosine(before))

    def lr(self, step: int, progress: float) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        floor = self.min_lr_ratio
        if self.kind == "cosine":
            scale = self._cosine(progress)
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
        return {
            "plateau_scale": self.plateau_scale,
            "best": self._best,
            "bad": self._bad,
            "horizon": self.horizon,
            "anchor": None if self.anchor is None else list(self.anchor),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the state; ``horizon`` stays the one set on this schedule (the caller compares it with the
        saved ``state["horizon"]`` and calls :meth:`replan` when they differ)."""
        self.plateau_scale = float(state["plateau_scale"])
        self._best = float(state["best"])
        self._bad = int(state["bad"])
        anchor = state.get("anchor")
        self.anchor = None if anchor is None else (float(anchor[0]), float(anchor[1]))
