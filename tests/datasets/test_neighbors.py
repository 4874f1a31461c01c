"""Neighbour lists: every backend against a brute-force oracle and against each other."""

from __future__ import annotations

import itertools

import matscipy  # noqa: F401 - a dev dependency: the second maintained library to compare against
import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111, molecule

from mlip_datasets.neighbors import BACKENDS, edge_vectors, neighbor_list


def brute_force(positions, cell, pbc, cutoff):
    """All (i, j, shift) with |r_j - r_i + shift @ cell| < cutoff, by enumerating enough periodic images."""
    positions, cell = np.asarray(positions, float), np.asarray(cell, float)
    full = cell.copy()  # the image count only needs lattice-plane spacings: fill a zero non-periodic vector
    for k in range(3):
        if not pbc[k] and not full[k].any():
            full[k] = np.cross(full[(k + 1) % 3], full[(k + 2) % 3])
    ranges = []
    for k in range(3):
        if not pbc[k]:
            ranges.append([0])
            continue
        others = full[[(k + 1) % 3, (k + 2) % 3]]
        normal = np.cross(*others)
        spacing = abs(cell[k] @ normal) / np.linalg.norm(normal)  # distance between lattice planes
        extent = np.ptp(positions @ (normal / np.linalg.norm(normal))) if len(positions) else 0.0
        n = int(np.ceil((cutoff + extent) / spacing)) + 1
        ranges.append(range(-n, n + 1))
    rows = []
    for shift in itertools.product(*ranges):
        d = positions[None, :, :] - positions[:, None, :] + np.asarray(shift, float) @ cell
        i, j = np.nonzero(np.linalg.norm(d, axis=-1) < cutoff)
        keep = (i != j) | any(shift)
        rows += [(a, b, *shift) for a, b in zip(i[keep], j[keep])]
    return np.array(sorted(rows), dtype=np.int64).reshape(-1, 5)


def canonical(src, dst, shifts):
    rows = np.column_stack([src, dst, shifts])
    return rows[np.lexsort(rows.T[::-1])]


def _slab(zero_c: bool):
    slab = fcc111("Pt", (2, 2, 3), vacuum=5.0)
    add_adsorbate(slab, "O", 9.0, "ontop")  # sticks out of the cell along the non-periodic axis
    cell = slab.cell.array.copy()
    if zero_c:
        cell[2] = 0.0
    return slab.positions, cell, [True, True, False]


def _bulk(n, rattle=0.05, seed=0):
    atoms = bulk("Cu", "fcc", a=3.61) * (n, n, n)
    atoms.positions += np.random.default_rng(seed).normal(scale=rattle, size=atoms.positions.shape)
    return atoms.positions, atoms.cell.array, [True] * 3


TRICLINIC = np.array([[3.1, 0.0, 0.0], [1.4, 2.8, 0.0], [0.9, 1.2, 3.3]])
_RNG = np.random.default_rng(42)
_TRI_POS = _RNG.random((6, 3)) @ TRICLINIC * 1.2 - 0.7  # some atoms outside the cell

CASES = {
    "molecule": (molecule("CH3CH2OH").positions, np.zeros((3, 3)), [False] * 3, 3.1),
    "bulk": (*_bulk(3), 5.0),
    "slab": (*_slab(zero_c=False), 4.1),
    "slab-zero-c": (*_slab(zero_c=True), 4.1),
    "small-cell": (*_bulk(1), 7.3),  # cutoff is about three cell lengths: many images of every atom
    "triclinic": (_TRI_POS, TRICLINIC, [True] * 3, 5.5),
    "triclinic-mixed": (_TRI_POS, TRICLINIC, [True, False, True], 5.5),
    "wire": (_TRI_POS, TRICLINIC, [False, False, True], 4.5),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
def test_backend_matches_brute_force(case, backend):
    positions, cell, pbc, cutoff = CASES[case]
    src, dst, shifts = neighbor_list(positions, cell, pbc, cutoff, backend=backend)
    assert src.dtype == dst.dtype == shifts.dtype == np.int64 and shifts.shape == (len(src), 3)
    got = canonical(src, dst, shifts)
    expected = brute_force(positions, cell, pbc, cutoff)
    assert len(expected) > 0
    np.testing.assert_array_equal(got, expected)
    assert np.all(np.diff(src) >= 0), "edges are sorted by source"
    assert not np.any(shifts[:, ~np.asarray(pbc)]), "no shifts along non-periodic axes"


@pytest.mark.parametrize("case", list(CASES))
def test_backends_agree_on_distances(case):
    positions, cell, pbc, cutoff = CASES[case]
    results = {}
    for backend in BACKENDS:
        src, dst, shifts = neighbor_list(positions, cell, pbc, cutoff, backend=backend)
        order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], dst, src))
        d = np.linalg.norm(edge_vectors(positions, cell, src, dst, shifts), axis=1)[order]
        results[backend] = d
        assert d.max() < cutoff
    for backend in BACKENDS[1:]:
        np.testing.assert_allclose(results[backend], results[BACKENDS[0]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_list_is_symmetric(backend):
    positions, cell, pbc, cutoff = CASES["triclinic-mixed"]
    src, dst, shifts = neighbor_list(positions, cell, pbc, cutoff, backend=backend)
    forward = {(i, j, *s) for i, j, s in zip(src.tolist(), dst.tolist(), shifts.tolist())}
    backward = {(j, i, *(-x for x in s)) for i, j, s in zip(src.tolist(), dst.tolist(), shifts.tolist())}
    assert forward == backward


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_atom_sees_only_its_images(backend):
    src, dst, shifts = neighbor_list([[0.0, 0, 0]], np.eye(3) * 2.0, True, 2.5, backend=backend)
    assert set(map(tuple, shifts.tolist())) == {
        s for s in itertools.product((-1, 0, 1), repeat=3) if 0 < sum(x * x for x in s) <= 1
    }  # distances 2.0 only
    src, dst, shifts = neighbor_list([[0.0, 0, 0]], np.zeros((3, 3)), False, 2.5, backend=backend)
    assert len(src) == 0


def test_empty_and_bad_inputs():
    src, dst, shifts = neighbor_list(np.zeros((0, 3)), np.eye(3), True, 3.0)
    assert src.shape == (0,) and shifts.shape == (0, 3)
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(np.zeros((2, 3)), np.eye(3), True, 0.0)
    with pytest.raises(ValueError, match="backend"):
        neighbor_list(np.zeros((2, 3)), np.eye(3), True, 1.0, backend="nope")
    with pytest.raises(ValueError, match="periodic"):
        neighbor_list(np.zeros((2, 3)), np.diag([3.0, 3.0, 0.0]), True, 1.0)
