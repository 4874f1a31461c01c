"""Reading the structures a trained model is run on (relax, md) and checking the model covers them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import UsageError

__all__ = ["read_structures", "check_elements", "check_cells"]


def read_structures(path: Path) -> list:
    """Every frame of ``path`` (any ``ase.io`` file, or any data set ``mlip data`` reads)."""
    from mlip_datasets.io import open_dataset

    with open_dataset(path) as reader:
        structures = [reader[i] for i in range(len(reader))]
    if not structures:
        raise UsageError(f"{path}: holds no structures")
    return structures


def check_elements(structures: Iterable, elements: Sequence[int], path: Path, first: int = 0) -> None:
    """Every element must be one of ``elements`` (the model's); the error names the first bad structure."""
    known = {int(z) for z in elements}
    for i, s in enumerate(structures, start=first):
        extra = sorted({int(z) for z in s.numbers} - known)
        if extra:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in extra)
            raise UsageError(
                f"{path}: structure {i} has elements ({names}) that the model does not cover "
                f"(model elements: {' '.join(chemical_symbols[z] for z in sorted(known))})"
            )


def check_cells(structures: Iterable, path: Path, first: int = 0) -> None:
    """Periodic axes need non-zero, linearly independent cell vectors; the error names the first bad structure.

    ``first`` is the index of the first of ``structures`` in the file (``mlip md --index``).
    """
    import numpy as np

    for i, s in enumerate(structures, start=first):
        pbc = np.broadcast_to(np.asarray(s.pbc, dtype=bool), (3,))
        if not pbc.any():
            continue
        cell = np.asarray(s.cell, dtype=np.float64).reshape(3, 3)
        periodic = cell[pbc]
        norms = np.linalg.norm(periodic, axis=1)
        axes = "".join("xyz"[k] for k in range(3) if pbc[k])
        if not np.all(np.isfinite(periodic)) or norms.min() < 1e-9:
            raise UsageError(f"{path}: structure {i} is periodic along {axes} but has a zero or non-finite cell vector")
        unit = periodic / norms[:, None]
        # Gram determinant of the unit vectors: 1 for orthogonal, 0 for linearly dependent (zero volume / area)
        if np.linalg.det(unit @ unit.T) < 1e-10:
            raise UsageError(
                f"{path}: structure {i} is periodic along {axes} but its cell vectors there are linearly dependent "
                "(zero volume: a flat cell)"
            )
