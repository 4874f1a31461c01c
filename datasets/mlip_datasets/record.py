"""The one in-memory record type every format reads into and writes from.

Units: Angstrom, eV, eV/Angstrom; stress in eV/Angstrom^3 with ASE's sign convention, stored as a full
3x3 matrix (Voigt order xx yy zz yz xz xy where a 6-vector is needed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DataError

LABELS = ("energy", "forces", "stress", "charge", "spin")

#: |det(cell)| below this (A^3) counts as no cell: molecules store an all-zero cell.
MIN_CELL_VOLUME = 1e-6

#: Largest atomic number (Og). 0 is allowed too: ASE's dummy atom 'X'; ``mlip data validate`` still reports it.
MAX_Z = 118


class AtomicNumberError(DataError, ValueError):
    """A record holds an atomic number outside 0..MAX_Z.

    A :class:`DataError` (so it reaches the user as one line even where nothing adds the file and record) and a
    ``ValueError`` (so readers that turn ``ValueError`` into a DataError naming the file and record do so).
    """


def check_numbers(numbers: np.ndarray) -> None:
    """Raise :class:`AtomicNumberError` naming the first atomic number outside 0..MAX_Z (and its atom)."""
    if numbers.size and (numbers.min() < 0 or numbers.max() > MAX_Z):
        atom = int(np.flatnonzero((numbers < 0) | (numbers > MAX_Z))[0])
        raise AtomicNumberError(
            None, f"atomic number {int(numbers[atom])} (atom {atom}) is not an element (allowed 1..{MAX_Z}, 0 = dummy)"
        )


def is_periodic(cell, pbc) -> bool:
    """True when any axis is periodic and the cell has a volume (the one test calculator and models share)."""
    volume = abs(float(np.linalg.det(np.asarray(cell, dtype=np.float64).reshape(3, 3))))
    return bool(np.any(pbc)) and volume > MIN_CELL_VOLUME


@dataclass
class Structure:
    """One atomic structure with optional labels.

    Shapes:
        numbers (N,) int64, positions (N, 3) float64, cell (3, 3) float64, pbc (3,) bool,
        forces (N, 3), stress (3, 3), tags (N,) int64, fixed (N,) bool.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    charge: float | None = None
    spin: float | None = None  # spin multiplicity, as OMol25 stores it
    tags: np.ndarray | None = None
    fixed: np.ndarray | None = None
    sid: Any = None
    fid: Any = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        check_numbers(self.numbers)
        n = len(self.numbers)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(n, 3)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.stress is not None:
            self.stress = stress_to_matrix(self.stress)
        if self.tags is not None:
            self.tags = np.asarray(self.tags, dtype=np.int64).reshape(-1)
        if self.fixed is not None:
            self.fixed = np.asarray(self.fixed).astype(bool).reshape(-1)

    @property
    def natoms(self) -> int:
        return len(self.numbers)

    def labels(self) -> list[str]:
        """Names of the labels present on this record."""
        return [name for name in LABELS if getattr(self, name) is not None]

    def replace(self, **changes: Any) -> Structure:
        return dataclasses.replace(self, **changes)

    def to_atoms(self):
        """Convert to :class:`ase.Atoms` with a SinglePointCalculator holding the labels."""
        from .ase_convert import structure_to_atoms

        return structure_to_atoms(self)

    @classmethod
    def from_atoms(cls, atoms, **kwargs) -> Structure:
        """Build from :class:`ase.Atoms`; see :func:`mlip_datasets.ase_convert.atoms_to_structure`."""
        from .ase_convert import atoms_to_structure

        return atoms_to_structure(atoms, **kwargs)


def stress_to_matrix(stress) -> np.ndarray:
    """Accept a 3x3 matrix, a (1, 3, 3) tensor or a Voigt 6-vector (xx yy zz yz xz xy); return 3x3."""
    s = np.asarray(stress, dtype=np.float64)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:
        xx, yy, zz, yz, xz, xy = s.reshape(6)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise ValueError(f"stress must have 6 (Voigt) or 9 components, got shape {s.shape}")


def stress_to_voigt(stress: np.ndarray) -> np.ndarray:
    """3x3 -> Voigt 6-vector in ASE order xx yy zz yz xz xy."""
    s = np.asarray(stress, dtype=np.float64).reshape(3, 3)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
