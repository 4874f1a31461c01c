"""Data-set statistics: per-element reference energies (E0s), energy and force statistics, neighbour counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .record import MAX_Z, Structure


@dataclass
class DatasetStats:
    """Summary of a data set. E0s are in eV per atom of each element."""

    n_structures: int = 0
    n_atoms: int = 0
    natoms_min: int = 0
    natoms_max: int = 0
    element_counts: dict[int, int] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)
    periodicity: dict[str, int] = field(default_factory=dict)
    """Counts of pbc patterns, e.g. {"TTF": 120} for slabs."""
    e0s: dict[int, float] = field(default_factory=dict)
    energy_per_atom_mean: float | None = None
    energy_per_atom_std: float | None = None
    interaction_energy_per_atom_mean: float | None = None
    interaction_energy_per_atom_std: float | None = None
    force_rms: float | None = None
    force_abs_max: float | None = None
    force_component_mean: float | None = None
    cutoff: float | None = None
    avg_neighbors: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["element_counts"] = {str(k): v for k, v in self.element_counts.items()}
        d["e0s"] = {str(k): v for k, v in self.e0s.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DatasetStats:
        """The inverse of :meth:`as_dict` (e.g. statistics a native store keeps); unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["element_counts"] = {int(k): int(v) for k, v in (d.get("element_counts") or {}).items()}
        values["e0s"] = {int(k): float(v) for k, v in (d.get("e0s") or {}).items()}
        return cls(**values)


def fit_e0s(
    compositions: np.ndarray, energies: np.ndarray, elements: list[int], known: dict[int, float] | None = None
) -> dict[int, float]:
    """Least-squares per-element energies so that ``E ~ sum_Z count_Z * E0_Z``.

    Shapes:
        compositions (S, Z) atom counts per structure and element, energies (S,).

    ``known`` E0s (e.g. from isolated-atom calculations) are kept as given and only the other elements are
    fitted. An element whose column is collinear with others (e.g. always present in the same ratio) gets the
    minimum-norm solution, which is still a valid reference for the fitted data.
    """
    known = {int(z): float(e) for z, e in (known or {}).items() if int(z) in elements}
    compositions = compositions.astype(np.float64)
    free = [k for k, z in enumerate(elements) if z not in known]
    fixed = np.array([known.get(int(z), 0.0) for z in elements])
    result = {int(z): known[int(z)] for z in elements if int(z) in known}
    if free:
        residual = np.asarray(energies, dtype=np.float64) - compositions @ fixed
        solution, *_ = np.linalg.lstsq(compositions[:, free], residual, rcond=None)
        result.update({int(elements[k]): float(e) for k, e in zip(free, solution)})
    return {int(z): result[int(z)] for z in elements}


def average_e0s(compositions: np.ndarray, energies: np.ndarray, elements: list[int]) -> dict[int, float]:
    """Every element gets the mean energy per atom of the data (robust where compositions barely vary).

    Shapes:
        compositions (S, Z), energies (S,).
    """
    per_atom = float(np.sum(energies) / max(float(compositions.sum()), 1.0))
    return {int(z): per_atom for z in elements}


def is_isolated_atom(structure: Structure) -> bool:
    """A reference calculation of one free atom: tagged ``config_type=IsolatedAtom`` (MACE's convention; also
    ``isolated_atom``), or any single non-periodic atom with an energy."""
    if structure.energy is None or structure.natoms != 1:
        return False
    tag = str(structure.info.get("config_type", "")).replace("_", "").lower()
    return tag == "isolatedatom" or not bool(np.any(structure.pbc))


def isolated_atoms(reader, natoms: np.ndarray) -> dict[int, tuple[int, float]]:
    """The isolated-atom records of ``reader`` as ``{Z: (record, energy)}``; only one-atom records are decoded.

    Shapes:
        natoms (len(reader),) atom count per record.

    Raises:
        DataError: two isolated-atom records of one element disagree on its energy.
    """
    from .errors import DataError

    found: dict[int, tuple[int, float]] = {}
    for record in np.flatnonzero(np.asarray(natoms) == 1).tolist():
        s = reader[record]
        if not is_isolated_atom(s):
            continue
        z = int(s.numbers[0])
        if z in found and abs(found[z][1] - float(s.energy)) > 1e-6:
            raise DataError(
                getattr(reader, "path", None),
                f"two isolated-atom energies for Z={z}: {found[z][1]} (record {found[z][0]}) and {s.energy}",
                record=record,
            )
        found.setdefault(z, (int(record), float(s.energy)))
    return found


class _EnergySums:
    """Sums over the labelled structures from which the E0 fit and the energy statistics follow exactly, in
    memory independent of the number of structures (a data set of 10^8 structures is one pass).

    With composition ``c`` (atoms per element), energy ``e`` and ``n`` atoms per structure: ``G = sum c c^T`` and
    ``b = sum c e`` (the normal equations of the E0 fit), and for the per-atom interaction energy
    ``r/n = e/n - (c/n).E0`` the sums of ``e/n``, ``(e/n)^2``, ``c/n``, ``(e/n)(c/n)`` and ``(c/n)(c/n)^T``.
    """

    def __init__(self) -> None:
        size = MAX_Z + 1
        self.count = 0
        self.G, self.H = np.zeros((size, size)), np.zeros((size, size))
        self.b, self.u, self.w = np.zeros(size), np.zeros(size), np.zeros(size)
        self.s1 = self.s2 = 0.0

    def add(self, numbers: np.ndarray, energy: float) -> None:
        elements, counts = np.unique(numbers, return_counts=True)
        c, n, e = counts.astype(np.float64), float(len(numbers)), float(energy)
        block = np.ix_(elements, elements)
        outer = np.outer(c, c)
        self.G[block] += outer
        self.H[block] += outer / (n * n)
        self.b[elements] += c * e
        self.u[elements] += c / n
        self.w[elements] += c * e / (n * n)
        self.s1 += e / n
        self.s2 += (e / n) ** 2
        self.count += 1

    def fit(self, order: list[int]) -> dict[int, float]:
        """The least-squares E0s (the minimum-norm solution where compositions are collinear, as
        :func:`fit_e0s`: the normal equations have the same solutions as the least-squares problem)."""
        idx = np.asarray(order)
        solution, *_ = np.linalg.lstsq(self.G[np.ix_(idx, idx)], self.b[idx], rcond=None)
        return {int(z): float(e) for z, e in zip(order, solution)}

    def fill(self, stats: DatasetStats, order: list[int]) -> None:
        stats.e0s = self.fit(order)
        idx = np.asarray(order)
        e0 = np.array([stats.e0s[z] for z in order])
        mean = self.s1 / self.count
        stats.energy_per_atom_mean = mean
        stats.energy_per_atom_std = float(np.sqrt(max(self.s2 / self.count - mean**2, 0.0)))
        r1 = self.s1 - self.u[idx] @ e0
        r2 = self.s2 - 2 * self.w[idx] @ e0 + e0 @ self.H[np.ix_(idx, idx)] @ e0
        stats.interaction_energy_per_atom_mean = r1 / self.count
        stats.interaction_energy_per_atom_std = float(np.sqrt(max(r2 / self.count - (r1 / self.count) ** 2, 0.0)))


def compute_stats(
    structures: Iterable[Structure],
    cutoff: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> DatasetStats:
    """One pass over ``structures`` in memory that does not grow with their number; ``cutoff`` also counts
    neighbours (slower: builds neighbour lists)."""
    if cutoff is not None:
        from .neighbors import neighbor_list  # only needed (and only imported) when counting neighbours
    stats = DatasetStats(cutoff=cutoff)
    elements = np.zeros(MAX_Z + 1, dtype=np.int64)
    labels: Counter[str] = Counter()
    periodicity: Counter[str] = Counter()
    energy = _EnergySums()
    f_sq, f_sum, f_n, f_max = 0.0, 0.0, 0, 0.0
    edges = 0
    count, atoms, smallest, largest = 0, 0, None, 0
    for k, s in enumerate(structures, 1):
        count, atoms = count + 1, atoms + s.natoms
        smallest = s.natoms if smallest is None else min(smallest, s.natoms)
        largest = max(largest, s.natoms)
        elements += np.bincount(s.numbers, minlength=MAX_Z + 1)
        labels.update(s.labels())
        periodicity["".join("T" if p else "F" for p in s.pbc)] += 1
        if s.energy is not None:
            energy.add(s.numbers, s.energy)
        if s.forces is not None:
            f_sq += float(np.sum(s.forces**2))
            f_sum += float(np.sum(s.forces))
            f_n += s.forces.size
            f_max = max(f_max, float(np.abs(s.forces).max(initial=0.0)))
        if cutoff is not None:
            src, _, _ = neighbor_list(s.positions, s.cell, s.pbc, cutoff)
            edges += len(src)
        if progress is not None:
            progress(k)
    if not count:
        return stats
    stats.n_structures, stats.n_atoms = count, atoms
    stats.natoms_min, stats.natoms_max = int(smallest), int(largest)
    stats.element_counts = {int(z): int(elements[z]) for z in np.flatnonzero(elements)}
    stats.label_counts = dict(labels)
    stats.periodicity = dict(periodicity)
    if energy.count:
        energy.fill(stats, sorted(stats.element_counts))
    if f_n:
        stats.force_rms = float(np.sqrt(f_sq / f_n))
        stats.force_component_mean = f_sum / f_n
        stats.force_abs_max = f_max
    if cutoff is not None:
        stats.avg_neighbors = edges / stats.n_atoms
    return stats
