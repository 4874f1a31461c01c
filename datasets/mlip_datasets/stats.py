"""Data-set statistics: per-element reference energies (E0s), energy and force statistics, neighbour counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from .record import Structure


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


def fit_e0s(compositions: np.ndarray, energies: np.ndarray, elements: list[int]) -> dict[int, float]:
    """Least-squares per-element energies so that ``E ~ sum_Z count_Z * E0_Z``.

    Shapes:
        compositions (S, Z) atom counts per structure and element, energies (S,).

    An element whose column is collinear with others (e.g. always present in the same ratio) gets the
    minimum-norm solution, which is still a valid reference for the fitted data.
    """
    solution, *_ = np.linalg.lstsq(compositions.astype(np.float64), energies, rcond=None)
    return {int(z): float(e) for z, e in zip(elements, solution)}


def compute_stats(
    structures: Iterable[Structure],
    cutoff: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> DatasetStats:
    """One pass over ``structures``; ``cutoff`` also counts neighbours (slower: builds neighbour lists)."""
    if cutoff is not None:
        from .neighbors import neighbor_list  # only needed (and only imported) when counting neighbours
    stats = DatasetStats(cutoff=cutoff)
    elements: Counter[int] = Counter()
    labels: Counter[str] = Counter()
    periodicity: Counter[str] = Counter()
    comps: list[Counter[int]] = []
    energies, natoms_e = [], []
    f_sq, f_sum, f_n, f_max = 0.0, 0.0, 0, 0.0
    edges = 0
    sizes = []
    for k, s in enumerate(structures, 1):
        sizes.append(s.natoms)
        counts = Counter(s.numbers.tolist())
        elements.update(counts)
        labels.update(s.labels())
        periodicity["".join("T" if p else "F" for p in s.pbc)] += 1
        if s.energy is not None:
            comps.append(counts)
            energies.append(s.energy)
            natoms_e.append(s.natoms)
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
    if not sizes:
        return stats
    stats.n_structures = len(sizes)
    stats.n_atoms = int(sum(sizes))
    stats.natoms_min, stats.natoms_max = int(min(sizes)), int(max(sizes))
    stats.element_counts = dict(sorted(elements.items()))
    stats.label_counts = dict(labels)
    stats.periodicity = dict(periodicity)
    if energies:
        order = sorted(elements)
        matrix = np.array([[c.get(z, 0) for z in order] for c in comps])
        e = np.asarray(energies)
        n = np.asarray(natoms_e)
        stats.e0s = fit_e0s(matrix, e, order)
        residual = e - matrix @ np.array([stats.e0s[z] for z in order])
        stats.energy_per_atom_mean = float(np.mean(e / n))
        stats.energy_per_atom_std = float(np.std(e / n))
        stats.interaction_energy_per_atom_mean = float(np.mean(residual / n))
        stats.interaction_energy_per_atom_std = float(np.std(residual / n))
    if f_n:
        stats.force_rms = float(np.sqrt(f_sq / f_n))
        stats.force_component_mean = f_sum / f_n
        stats.force_abs_max = f_max
    if cutoff is not None:
        stats.avg_neighbors = edges / stats.n_atoms
    return stats
