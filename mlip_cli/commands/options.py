"""Options shared by the commands that run a trained model, declared once so they read the same everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError, require_new_output  # noqa: F401  (re-exported to the commands)

ModelPath = Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (.pt) or run directory.")]
Device = Annotated[str, typer.Option(help="cpu or cuda[:i].")]
Dtype = Annotated[str | None, typer.Option(help="float32 or float64 (default: the checkpoint's).")]
Skin = Annotated[float, typer.Option(min=0.0, help="Neighbour-list skin, A.")]
Threads = Annotated[int | None, typer.Option(min=1, help="torch threads.")]
BatchAtoms = Annotated[int, typer.Option(min=1, help="At most this many atoms per model call.")]
Overwrite = Annotated[bool, typer.Option(help="Replace --out if it exists.")]
JsonSummary = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
EnergyKey = Annotated[
    str | None,
    typer.Option(
        "--energy-key",
        help="Key holding the energy label (default: the recipe's or checkpoint's data.keys, else energy).",
    ),
]
ForcesKey = Annotated[
    str | None,
    typer.Option(
        "--forces-key",
        help="Key holding the forces label (default: the recipe's or checkpoint's data.keys, else forces).",
    ),
]
StressKey = Annotated[
    str | None,
    typer.Option(
        "--stress-key",
        help="Key holding the stress label (default: the recipe's or checkpoint's data.keys, else stress).",
    ),
]
ChargeKey = Annotated[
    str | None,
    typer.Option(
        "--charge-key",
        help="Key holding the total charge (default: the recipe's or checkpoint's data.keys, else charge).",
    ),
]
SpinKey = Annotated[
    str | None,
    typer.Option(
        "--spin-key",
        help="Key holding the spin multiplicity (default: the recipe's or checkpoint's data.keys, else spin).",
    ),
]


def given_keys(**names: str | None) -> dict[str, str]:
    """The label keys a user named (``energy="REF_energy"``), leaving out the options not given."""
    return {label: name for label, name in names.items() if name is not None}


def label_keys(base: dict[str, str] | None = None, **names: str | None):
    """:class:`~mlip_datasets.keys.LabelKeys` from ``base`` (e.g. the keys a model was trained with) and the
    options given."""
    from mlip_datasets.keys import LabelKeys

    return LabelKeys(**{**(base or {}), **given_keys(**names)})


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
