"""Reading the structures a trained model is run on (relax, md) and checking the model covers them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import UsageError

__all__ = ["read_structures", "check_elements"]


def read_structures(path: Path) -> list:
    """Every frame of ``path`` (any ``ase.io`` file, or any data set ``mlip data`` reads)."""
    from mlip_datasets.io import open_dataset

    with open_dataset(path) as reader:
        structures = [reader[i] for i in range(len(reader))]
    if not structures:
        raise UsageError(f"{path}: holds no structures")
    return structures


def check_elements(structures: Iterable, elements: Sequence[int], path: Path) -> None:
    """Every element must be one of ``elements`` (the model's); the error names the first bad structure."""
    known = {int(z) for z in elements}
    for i, s in enumerate(structures):
        extra = sorted({int(z) for z in s.numbers} - known)
        if extra:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in extra)
            raise UsageError(
                f"{path}: structure {i} has elements ({names}) that the model does not cover "
                f"(model elements: {' '.join(chemical_symbols[z] for z in sorted(known))})"
            )
