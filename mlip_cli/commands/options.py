"""Options shared by the commands that run a trained model, declared once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelPath = Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pt) or run directory.")]
Device = Annotated[str, typer.Option(help="cpu or cuda[:i].")]
Dtype = Annotated[str | None, typer.Option(help="float32 or float64 (default: the checkpoint's).")]
Skin = Annotated[float, typer.Option(min=0.0, help="Neighbour-list skin, A.")]
Threads = Annotated[int | None, typer.Option(min=1, help="torch threads.")]


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (torch imported only when a command runs)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
