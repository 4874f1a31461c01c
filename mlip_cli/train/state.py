"""Typed training state: the counters a checkpoint carries for exact resume, and the loss window between
validations."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainState", "LossWindow"]


@dataclass
class TrainState:
    """Where a run is and what it has used: saved flat in a checkpoint's ``train_state`` beside the optimizer,
    schedule, EMA, symmetry-weight and RNG states (see :mod:`mlip_cli.checkpoint` for the schema).

    Attributes:
        step: optimizer steps taken (skipped non-finite steps do not count).
        epoch, batch_in_epoch: the data position; batches depend only on (seed, epoch), so this replays exactly.
        elapsed: training seconds (data + compute; validation not counted).
        best: lowest validation metric so far (inf before the first validation).
        bad_validations: validations in a row without improvement (early stopping).
        nan_streak: non-finite steps in a row.
        data_s, compute_s, valid_s: seconds spent loading batches, in steps, and validating.
        structures: structures trained on, over all processes.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0
    best: float = math.inf
    bad_validations: int = 0
    nan_streak: int = 0
    data_s: float = 0.0
    compute_s: float = 0.0
    valid_s: float = 0.0
    structures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        """Take this class's fields from a checkpoint's ``train_state`` (which also holds other entries).

        :func:`~mlip_cli.checkpoint.load_checkpoint` has migrated older schemas, so a missing field means a layout
        this code does not know: ``ValueError`` naming it, rather than a guess.
        """
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"train_state has no {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass
class LossWindow:
    """Training-loss sums since the last validation: what a metrics row reports for the training side.

    Squared-error sums and label counts are global (summed over processes); ``loss_sum`` adds each step's loss.
    """

    loss_sum: float = 0.0
    steps: int = 0
    energy_sse: float = 0.0
    energy_count: float = 0.0
    forces_sse: float = 0.0
    forces_count: float = 0.0

    def add(self, loss: float, energy_sse: float, energy_count: float, forces_sse: float, forces_count: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.energy_sse += energy_sse
        self.energy_count += energy_count
        self.forces_sse += forces_sse
        self.forces_count += forces_count

    @property
    def loss(self) -> float:
        """Mean training loss over the window's steps (NaN before the first)."""
        return self.loss_sum / self.steps if self.steps else float("nan")

    @property
    def energy_rmse(self) -> float | None:
        """Per-atom energy RMSE in meV/atom (None without energy labels)."""
        return 1000 * math.sqrt(self.energy_sse / self.energy_count) if self.energy_count else None

    @property
    def forces_rmse(self) -> float | None:
        """Force-component RMSE in meV/A (None without force labels)."""
        return 1000 * math.sqrt(self.forces_sse / self.forces_count) if self.forces_count else None
