"""Neighbour lists with periodic cell shifts, from vesin, matscipy or ASE behind one function.

Convention (the same in every backend): an edge ``e`` goes from ``src[e]`` (i) to ``dst[e]`` (j) and its vector is
``positions[dst] - positions[src] + shifts @ cell``. The list is *full*: both i->j and j->i are present. Self-pairs
are excluded only with a zero shift, so an atom does see its own periodic images when the cell is smaller than
the cutoff. Pairs are those with distance below ``cutoff`` (a pair at exactly ``cutoff`` may go either way).
Edges come sorted by ``src``; the order of ``dst`` within one ``src`` depends on the backend.

``backend="auto"`` is vesin, the fastest backend measured by ``benchmarks/bench_neighbors.py`` (2-core x86 CPU,
cutoff 5 A, one thread): on fcc Cu from 4 to 10,976 atoms matscipy took 1.1-2.8x and ASE 20-200x vesin's time,
and on the G2 molecules 1.1x and 12x. All three give identical edge sets (tests/datasets/test_neighbors.py).
"""

from __future__ import annotations

import numpy as np

BACKENDS = ("vesin", "matscipy", "ase")
AUTO_BACKEND = "vesin"


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc,
    cutoff: float,
    backend: str = "auto",
    num_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff``, with integer cell shifts.

    Args:
        positions: Cartesian positions in Angstrom.
        cell: cell vectors as rows; may be all zeros along non-periodic directions (molecules).
        pbc: periodicity per axis (a bool broadcasts to all three).
        cutoff: radius in Angstrom, > 0.
        backend: ``"vesin"``, ``"matscipy"``, ``"ase"`` or ``"auto"`` (vesin).
        num_threads: threads for vesin (0 = all cores). 1 by default because data loading runs in
            several worker processes already and typical training structures are too small to gain.

    Returns:
        ``(src, dst, shifts)`` int64 arrays.

    Shapes:
        positions (N, 3), cell (3, 3), pbc (3,) -> src (E,), dst (E,), shifts (E, 3).

    Raises:
        ValueError: bad cutoff, unknown backend, or a periodic axis whose cell vector is degenerate.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    cutoff = float(cutoff)
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    if backend == "auto":
        backend = AUTO_BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighbour-list backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    n = len(positions)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros((0, 3), dtype=np.int64)
    _check_periodic_cell(cell, pbc)
    if backend == "vesin":
        src, dst, shifts = _vesin(positions, cell, pbc, cutoff, num_threads)
    elif backend == "matscipy":
        src, dst, shifts = _matscipy(positions, cell, pbc, cutoff)
    else:
        src, dst, shifts = _ase(positions, cell, pbc, cutoff)
    return (
        np.asarray(src, dtype=np.int64),
        np.asarray(dst, dtype=np.int64),
        np.asarray(shifts, dtype=np.int64).reshape(-1, 3),
    )


def edge_vectors(
    positions: np.ndarray, cell: np.ndarray, src: np.ndarray, dst: np.ndarray, shifts: np.ndarray
) -> np.ndarray:
    """Edge vectors ``positions[dst] - positions[src] + shifts @ cell``.

    Shapes:
        positions (N, 3), cell (3, 3), src (E,), dst (E,), shifts (E, 3) -> (E, 3).
    """
    positions = np.asarray(positions, dtype=np.float64)
    return positions[dst] - positions[src] + np.asarray(shifts, dtype=np.float64) @ np.asarray(cell).reshape(3, 3)


def _check_periodic_cell(cell: np.ndarray, pbc: np.ndarray) -> None:
    periodic = cell[pbc]
    if not len(periodic):
        return
    norms = np.sqrt(np.einsum("ij,ij->i", periodic, periodic))
    unit = periodic / np.where(norms > 0, norms, 1.0)[:, None]
    # Gram determinant of the unit vectors: 1 for orthogonal, 0 for zero or linearly dependent vectors
    if norms.min() == 0 or np.linalg.det(unit @ unit.T) < 1e-10:
        axes = "".join("xyz"[k] for k in range(3) if pbc[k])
        raise ValueError(f"cell vectors of the periodic axes ({axes}) are zero or linearly dependent: {cell.tolist()}")


def _complete_cell(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray, cutoff: float):
    """A non-singular cell and origin that keep the periodic vectors and wrap the atoms along the others.

    Shifts along non-periodic axes are always zero, so replacing those cell vectors changes nothing in the
    output; it only gives backends that invert the cell (matscipy) a box that holds every atom, which also keeps
    their binning efficient when atoms lie outside the user's (possibly zero) cell.

    Shapes:
        cell (3, 3), pbc (3,), positions (N, 3) -> cell (3, 3), origin (3,).
    """
    out = cell.copy()
    free = [k for k in range(3) if not pbc[k]]
    if not free:
        return out, np.zeros(3)
    periodic = cell[pbc]
    # orthonormal directions perpendicular to the periodic vectors (the null space of their span)
    if len(periodic):
        _, _, vt = np.linalg.svd(periodic)
        directions = vt[len(periodic) :]
    else:
        directions = np.eye(3)
    origin = np.zeros(3)
    for k, d in zip(free, directions):
        proj = positions @ d
        lo, hi = float(proj.min()), float(proj.max())
        out[k] = d * max(hi - lo + 1e-6, cutoff)  # at least one bin deep; wide enough to hold every atom
        origin += d * (lo - 1e-9)
    return out, origin


def _vesin(positions, cell, pbc, cutoff, num_threads):
    from vesin import NeighborList

    nl = NeighborList(cutoff=cutoff, full_list=True, sorted=True, n_threads=num_threads)
    # vesin copes with zero cells and atoms outside the box along non-periodic axes by itself
    src, dst, shifts = nl.compute(positions, cell, pbc.tolist(), "ijS", copy=False)
    # copy=False hands out views into ``nl``: astype copies them before ``nl`` is freed
    return src.astype(np.int64), dst.astype(np.int64), shifts.astype(np.int64)


def _matscipy(positions, cell, pbc, cutoff):
    from matscipy.neighbours import neighbour_list

    box, origin = _complete_cell(cell, pbc, positions, cutoff)
    return neighbour_list("ijS", positions=positions, cell=box, pbc=pbc, cutoff=cutoff, cell_origin=origin)


def _ase(positions, cell, pbc, cutoff):
    from ase.neighborlist import primitive_neighbor_list

    box, _ = _complete_cell(cell, pbc, positions, cutoff)
    # ASE works in fractional coordinates of ``box``; atoms outside it along free axes are handled by its binning
    return primitive_neighbor_list(
        "ijS", pbc, box, positions, cutoff, self_interaction=False, use_scaled_positions=False
    )
