"""What a model adds to training beyond the data loss: the small protocol between models and the trainer.

The trainer asks every model for :meth:`~mlip_cli.models.potential.Potential.training_hooks` instead of probing
for family-specific attributes; a family that needs nothing more returns the empty default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TrainingHooks"]


@dataclass(frozen=True)
class TrainingHooks:
    """Training extras a model asks for.

    Attributes:
        symmetry_types: names of the symmetries whose violation ``regularizers`` measures (in that order).
        regularizers: ``regularizers(batch, out) -> {type: differentiable scalar}`` for each of
            ``symmetry_types``, given the batch and the model's output on it; None when there are none.
    """

    symmetry_types: tuple[str, ...] = ()
    regularizers: Callable[..., dict[str, torch.Tensor]] | None = None

    @property
    def has_regularizers(self) -> bool:
        return self.regularizers is not None and bool(self.symmetry_types)
