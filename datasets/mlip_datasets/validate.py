"""Check every record of a data set and collect what is wrong with each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .formats.base import Reader
from .record import LABELS, MAX_Z, Structure

MIN_DISTANCE = 0.1  # Angstrom: closer atoms are almost certainly a unit or parsing error


@dataclass(frozen=True)
class Problem:
    index: int
    record: str
    message: str

    def __str__(self) -> str:
        return f"{self.record}: {self.message}"


def _finite(name: str, value) -> list[str]:
    if value is None:
        return []
    arr = np.asarray(value, dtype=np.float64)
    return [] if np.all(np.isfinite(arr)) else [f"{name} has NaN/inf"]


def check_structure(s: Structure, min_distance: float = MIN_DISTANCE) -> list[str]:
    """Return a message for every problem found in one record (empty when it is fine)."""
    n = s.natoms
    issues = []
    if n == 0:
        return ["no atoms"]
    bad_z = sorted({int(z) for z in s.numbers if z < 1 or z > MAX_Z})
    if bad_z:
        issues.append(f"unknown element numbers {bad_z}")
    for name in ("positions", "cell", "energy", "forces", "stress", "charge", "spin"):
        issues += _finite(name, getattr(s, name))
    if s.forces is not None and s.forces.shape != (n, 3):
        issues.append(f"forces has shape {s.forces.shape}, expected ({n}, 3)")
    for name in ("tags", "fixed"):
        value = getattr(s, name)
        if value is not None and value.shape != (n,):
            issues.append(f"{name} has shape {value.shape}, expected ({n},)")
    if np.any(np.linalg.norm(s.cell, axis=1)[s.pbc] < 1e-9):
        issues.append("periodic along an axis whose cell vector is zero")
    if not issues and n > 1:
        issues += _close_atoms(s, min_distance)
    return issues


def _close_atoms(s: Structure, min_distance: float) -> list[str]:
    """One message when atoms are closer than ``min_distance``; memory stays linear in the atom count.

    A neighbour list of N coincident atoms has N^2 pairs, so atoms sharing a cube whose diagonal is
    ``min_distance`` (certainly too close) are found first by hashing, in O(N). Only when every such cube holds
    at most one atom is the neighbour list built: its pairs per atom are then bounded by a constant.
    """
    from .neighbors import edge_vectors, neighbor_list

    positions = np.asarray(s.positions, dtype=np.float64)
    keys = np.floor(positions / (min_distance / np.sqrt(3.0))).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    crowded = np.flatnonzero(counts[inverse] > 1)
    if len(crowded):
        i = int(crowded[0])
        j = int(crowded[inverse[crowded] == inverse[i]][1])
        d = float(np.linalg.norm(positions[j] - positions[i]))
        return [
            f"at least {len(crowded)} atoms are closer than {min_distance} A to another atom "
            f"(e.g. atoms {i} and {j} are {d:.3f} A apart)"
        ]
    # cell-list libraries bin space by the cutoff: a 0.1 A cutoff makes millions of bins, 1 A is fast
    src, dst, shifts = neighbor_list(positions, s.cell, s.pbc, max(min_distance, 1.0))
    if len(src) == 0:
        return []
    dist = np.linalg.norm(edge_vectors(positions, s.cell, src, dst, shifts), axis=1)
    close = dist < min_distance
    if not close.any():
        return []
    k = int(np.argmin(dist))
    n = len(np.unique(src[close]))
    return [
        f"{n} atoms are closer than {min_distance} A to another atom "
        f"(e.g. atoms {int(src[k])} and {int(dst[k])} are {float(dist[k]):.3f} A apart)"
    ]


def validate(
    reader: Reader,
    min_distance: float = MIN_DISTANCE,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Problem], int]:
    """Check every record of ``reader``; returns (problems, number of bad records).

    A label present on some records but not on others is reported as missing on the latter.
    """
    problems: list[Problem] = []
    bad: set[int] = set()
    present: list[frozenset[str] | None] = []
    for i in range(len(reader)):
        try:
            s = reader[i]
        except DataError as err:
            problems.append(Problem(i, reader.record_name(i), err.message))
            bad.add(i)
            present.append(None)
        else:
            for message in check_structure(s, min_distance):
                problems.append(Problem(i, reader.record_name(i), message))
                bad.add(i)
            present.append(frozenset(s.labels()))
        if progress is not None:
            progress(i + 1)
    seen = frozenset().union(*(p for p in present if p is not None))
    for i, labels in enumerate(present):
        missing = [name for name in LABELS if name in seen and labels is not None and name not in labels]
        if missing:
            problems.append(Problem(i, reader.record_name(i), f"missing labels: {', '.join(missing)}"))
            bad.add(i)
    problems.sort(key=lambda p: p.index)
    return problems, len(bad)
