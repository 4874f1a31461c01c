"""Bond-topology changes during a simulation: an atom leaving every other atom, or a covalent bond breaking.

    monitor = TopologyMonitor(atoms)          # the reference topology: the structure as it is now
    change = monitor.check(atoms)             # later: None, or the worst change found

Criteria (the defaults are module constants):

* **Neighbours** at the start: pairs closer than ``BOND_MULTIPLIER x (r_i + r_j)``, with ``r`` ASE's covalent
  radii (:func:`ase.neighborlist.natural_cutoffs`); 1.2 because C-H (1.09 A) is longer than the plain sum of the
  radii (0.76 + 0.31 A), while 1,3 neighbours (C...C 2.5 A) and hydrogen bonds (O...H 1.6-1.9 A) stay out.
* **Dissociation**: an atom that had a neighbour at the start is farther than ``max(ISOLATION_DISTANCE_A,
  STRETCH_FACTOR x its starting nearest-neighbour distance)`` from every other atom (periodic images included).
  2 A covers molecules (every bond to H, C, N, O is shorter); the relative term keeps metals, whose nearest
  neighbours are already 2.5-2.9 A apart, from counting as dissociated at the start. Atoms with no neighbour at
  the start (a gas atom, a lone ion) are not watched: there is nothing for them to leave.
* **Bond stretch**: a starting neighbour pair of two non-metal atoms (a covalent bond) longer than
  ``STRETCH_FACTOR`` times its starting length. Pairs with a metal atom are not checked: in metals, alloys and
  on surfaces "bonds" are all the neighbours, which swap in any liquid or diffusing state without anything
  failing, so there only the dissociation check applies.
* **Partner exchange** (``partner_exchange=True``, the default): a stretched bond i-j does not count when i is
  now bonded (by the neighbour criterion above) to a new partner of j's element, or j to a new partner of i's,
  new meaning not a neighbour at the start. A proton moving between two O atoms, as in acetylacetone's enol
  (with the acac models trained here it hops back and forth within the first picosecond at 600 K), changes
  partners while nothing breaks; counting it would make a topology change of every hot acac run. A proton
  between two hydrogen-bonding atoms (``HYDROGEN_BOND_ELEMENTS``: N, O, F) is also exchanged in flight, while it
  is within the stretch limit of the bond it left (``STRETCH_FACTOR`` x its starting length) of the new one: two
  O atoms 2.6 A apart leave it 1.56 A from one and 1.2 A from the other, shared by both and bonded to neither by
  the neighbour criterion (1.16 A for O-H), which called every such frame a break. A hydrogen bridging two
  carbons that far from both has no such excuse (carbon takes no hydrogen bond) and counts.
  ``partner_exchange=False`` counts every stretched bond.

Periodic cells: each bond keeps the periodic image it had at the start (``positions[j] - positions[i] + shift @
cell`` with the current cell), which is exact for unwrapped trajectories such as ASE's integrators write; the
nearest-neighbour search covers every image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlip_datasets.neighbors import edge_vectors, neighbor_list

__all__ = [
    "BOND_MULTIPLIER",
    "ISOLATION_DISTANCE_A",
    "STRETCH_FACTOR",
    "HYDROGEN_BOND_ELEMENTS",
    "NON_METALS",
    "TopologyChange",
    "TopologyMonitor",
]

BOND_MULTIPLIER = 1.2
ISOLATION_DISTANCE_A = 2.0
STRETCH_FACTOR = 1.5
#: N, O, F: the atoms between which a proton moves along a hydrogen bond (exchanged in flight, see above)
HYDROGEN_BOND_ELEMENTS = frozenset({7, 8, 9})
#: H, He, B, C, N, O, F, Ne, Si, P, S, Cl, Ar, Ge, As, Se, Br, Kr, Sb, Te, I, Xe, At, Rn: the elements whose
#: mutual bonds are covalent (metalloids included).
NON_METALS = frozenset({1, 2, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 18, 32, 33, 34, 35, 36, 51, 52, 53, 54, 85, 86})


@dataclass(frozen=True)
class TopologyChange:
    """The worst topology change one check found.

    Attributes:
        kind: ``"dissociation"`` (an atom left every other atom) or ``"bond"`` (a covalent bond stretched).
        atoms: the atom (dissociation) or the two atoms of the bond.
        distance: its nearest-neighbour distance now, or the bond length now, A.
        reference: its starting nearest-neighbour distance, or the bond's starting length, A.
        count: how many atoms (dissociation) or bonds changed at this check.
        description: one line, e.g. ``atom 7 (H) is 2.31 A from every other atom``.
    """

    kind: str
    atoms: tuple[int, ...]
    distance: float
    reference: float
    count: int
    description: str


class TopologyMonitor:
    """The reference topology of ``atoms`` and a :meth:`check` against it (criteria in the module docstring).

    Args:
        atoms: the starting structure (ASE ``Atoms``); only positions, numbers, cell and pbc are read.
        bond_multiplier, isolation_distance, stretch_factor: the criteria's constants.
        partner_exchange: let a bond whose atom is bonded to a new partner of the same element go (module
            docstring).
    """

    def __init__(
        self,
        atoms,
        bond_multiplier: float = BOND_MULTIPLIER,
        isolation_distance: float = ISOLATION_DISTANCE_A,
        stretch_factor: float = STRETCH_FACTOR,
        partner_exchange: bool = True,
    ):
        from ase.neighborlist import natural_cutoffs

        if not (bond_multiplier > 0 and isolation_distance > 0 and stretch_factor > 1):
            raise ValueError(
                f"need positive multiplier and distance and a stretch factor above 1, got {bond_multiplier}, "
                f"{isolation_distance} A, {stretch_factor}"
            )
        self.stretch_factor = float(stretch_factor)
        self.symbols = atoms.get_chemical_symbols()
        self.partner_exchange = bool(partner_exchange)
        numbers = atoms.numbers
        radii = np.asarray(natural_cutoffs(atoms, mult=bond_multiplier), dtype=np.float64)
        self.radii = radii  # bonded: closer than radii[i] + radii[j]
        n = len(atoms)
        if n:
            src, dst, shifts, length = _pairs(atoms, 2 * float(radii.max()))
            bonded = length < radii[src] + radii[dst]
            src, dst, shifts, length = src[bonded], dst[bonded], shifts[bonded], length[bonded]
        else:
            src = dst = np.zeros(0, dtype=np.int64)
            shifts, length = np.zeros((0, 3), dtype=np.int64), np.zeros(0)
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, src, length)
        self.watched = np.isfinite(nearest)  # atoms with a neighbour at the start
        self.numbers = np.array(numbers)
        self.partners = [set() for _ in range(n)]  # the starting neighbours of each atom
        for i, j in zip(src.tolist(), dst.tolist()):
            self.partners[i].add(j)
        self.nearest_start = nearest
        self.isolation = np.where(self.watched, np.maximum(isolation_distance, self.stretch_factor * nearest), 0.0)
        self.search_radius = float(self.isolation.max()) if self.watched.any() else 0.0
        # covalent bonds: each pair once (i < j, or a periodic self-image once per +-shift pair)
        metal = ~np.isin(numbers, list(NON_METALS))
        once = (src < dst) | ((src == dst) & _positive(shifts))
        keep = once & ~metal[src] & ~metal[dst]
        self.bond_src, self.bond_dst, self.bond_shifts = src[keep], dst[keep], shifts[keep]
        self.bond_length_start = length[keep]

    @property
    def num_bonds(self) -> int:
        return len(self.bond_src)

    def check(self, atoms) -> TopologyChange | None:
        """The worst change of ``atoms`` (same atoms as at the start) against the starting topology, or None.

        A dissociation outranks a stretched bond (a departing atom stretches its bonds too)."""
        if not self.watched.any():
            return None
        positions = atoms.positions
        src, _, _, length = _pairs(atoms, self.search_radius)
        nearest = np.full(len(atoms), np.inf)
        np.minimum.at(nearest, src, length)
        gone = np.flatnonzero(self.watched & (nearest > self.isolation))
        if len(gone):
            exact = {int(i): _nearest_distance(atoms, int(i)) for i in gone}
            worst = max(exact, key=lambda i: exact[i] / self.isolation[i])
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            return TopologyChange(
                kind="dissociation",
                atoms=(worst,),
                distance=exact[worst],
                reference=float(self.nearest_start[worst]),
                count=len(gone),
                description=f"atom {worst} ({self.symbols[worst]}) is {exact[worst]:.3g} A from every other atom"
                + more,
            )
        if not self.num_bonds:
            return None
        vectors = edge_vectors(positions, atoms.cell.array, self.bond_src, self.bond_dst, self.bond_shifts)
        ratio = np.linalg.norm(vectors, axis=1) / self.bond_length_start
        broken = np.flatnonzero(ratio > self.stretch_factor)
        if self.partner_exchange:
            broken = np.array([b for b in broken if not self._exchanged(atoms, int(b))], dtype=np.int64)
        if not len(broken):
            return None
        b = int(broken[np.argmax(ratio[broken])])
        i, j = int(self.bond_src[b]), int(self.bond_dst[b])
        start = float(self.bond_length_start[b])
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        return TopologyChange(
            kind="bond",
            atoms=(i, j),
            distance=float(ratio[b] * start),
            reference=start,
            count=len(broken),
            description=f"bond {i}-{j} ({self.symbols[i]}-{self.symbols[j]}) is {ratio[b] * start:.3g} A, "
            f"{ratio[b]:.2f}x its starting {start:.3g} A" + more,
        )

    def _exchanged(self, atoms, bond: int) -> bool:
        """Whether either atom of ``bond`` is now bonded to a new partner of the other's element (a proton between
        hydrogen-bonding atoms: or within the bond's stretch limit of one, shared on its way across)."""
        i, j = int(self.bond_src[bond]), int(self.bond_dst[bond])
        for a, lost in ((i, j), (j, i)):
            new = np.flatnonzero(self.numbers == self.numbers[lost])
            new = [int(k) for k in new if k != a and k != lost and k not in self.partners[a]]
            if not new:
                continue
            limit = self.radii[a] + self.radii[new]
            if self.numbers[a] == 1 and self.numbers[lost] in HYDROGEN_BOND_ELEMENTS:
                limit = np.maximum(limit, self.stretch_factor * self.bond_length_start[bond])
            if (_distances(atoms, a, new) < limit).any():
                return True
        return False


def _pairs(atoms, cutoff: float):
    """Full neighbour list within ``cutoff``: (src, dst, shifts, distances)."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    src, dst, shifts = neighbor_list(atoms.positions, cell, atoms.pbc, cutoff)
    length = np.linalg.norm(edge_vectors(atoms.positions, cell, src, dst, shifts), axis=1)
    return src, dst, shifts, length


def _positive(shifts: np.ndarray) -> np.ndarray:
    """Whether each integer shift is lexicographically positive (picks one of ``S`` and ``-S``)."""
    first = np.where(shifts != 0, shifts, 0)
    nonzero = shifts != 0
    index = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
    return first[np.arange(len(shifts)), index] > 0


def _distances(atoms, i: int, others) -> np.ndarray:
    """Minimum-image distances from atom ``i`` to the atoms ``others`` (ASE's exact search for any cell)."""
    from ase.geometry import get_distances

    _, d = get_distances(atoms.positions[i], atoms.positions[others], cell=atoms.cell, pbc=atoms.pbc)
    return d.reshape(-1)


def _nearest_distance(atoms, i: int) -> float:
    """Distance from atom ``i`` to the nearest other atom (minimum image for periodic axes)."""
    others = np.delete(np.arange(len(atoms)), i)
    return float(_distances(atoms, i, others).min()) if len(others) else float("inf")
