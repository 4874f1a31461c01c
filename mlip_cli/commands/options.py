"""Options shared by the commands that run a trained model, declared once so they read the same everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError

ModelPath = Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pt) or run directory.")]
Device = Annotated[str, typer.Option(help="cpu or cuda[:i].")]
Dtype = Annotated[str | None, typer.Option(help="float32 or float64 (default: the checkpoint's).")]
Skin = Annotated[float, typer.Option(min=0.0, help="Neighbour-list skin, A.")]
Threads = Annotated[int | None, typer.Option(min=1, help="torch threads.")]


def require_choice(option: str, value: str, allowed: Sequence[str]) -> None:
    """One line naming the option and the allowed values when ``value`` is not one of them."""
    if value not in allowed:
        raise UsageError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")


def require_positive(option: str, value: float) -> None:
    if not value > 0:
        raise UsageError(f"{option} must be positive, got {value}")


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (torch imported only when a command runs)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
