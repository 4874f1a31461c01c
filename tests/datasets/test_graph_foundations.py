"""The shared foundations models and the calculator build on: edge vectors, label-free batches, periodicity."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlip_datasets.graph import Batch, collate_graphs, edge_vectors, structure_to_graph, unlabelled_batch
from mlip_datasets.record import MIN_CELL_VOLUME, Structure, is_periodic

CUTOFF = 4.0


def _structures() -> list[Structure]:
    """Two triclinic crystals (primitive fcc cells of different sizes), the second periodic along two axes only,
    and a molecule without a cell."""
    rng = np.random.default_rng(0)
    out = []
    for element, a, repeat, pbc in (("Cu", 3.6, (2, 1, 1), True), ("Pt", 3.9, (1, 2, 1), [True, True, False])):
        crystal = bulk(element, "fcc", a=a) * repeat
        crystal.numbers[1] = 79
        crystal.positions += rng.normal(scale=0.1, size=crystal.positions.shape)
        out.append(Structure(numbers=crystal.numbers, positions=crystal.positions, cell=crystal.cell.array, pbc=pbc))
    mol = molecule("CH3OH")
    mol.positions += rng.normal(scale=0.05, size=mol.positions.shape)
    return [*out, Structure(numbers=mol.numbers, positions=mol.positions)]


def _ase_edges(s: Structure) -> dict[tuple[int, ...], np.ndarray]:
    """ASE's neighbour list as {(i, j, shift): vector}: the independent oracle."""
    i, j, shifts, vectors = ase_neighbor_list("ijSD", s.to_atoms(), CUTOFF)
    return {(a, b, *shift): d for a, b, shift, d in zip(i.tolist(), j.tolist(), shifts.tolist(), vectors)}


def _our_edges(src, dst, shifts, vectors) -> dict[tuple[int, ...], np.ndarray]:
    rows = zip(src.tolist(), dst.tolist(), torch.round(shifts).long().tolist(), vectors.numpy())
    return {(a, b, *shift): d for a, b, shift, d in rows}


def test_edge_vectors_match_ase_per_structure_and_batched():
    structures = _structures()
    graphs = [structure_to_graph(s, CUTOFF) for s in structures]
    batch = collate_graphs(graphs)
    vectors = edge_vectors(batch.positions, batch.cell, batch.shifts, batch.edge_index, batch.batch)
    assert torch.equal(vectors, batch.edge_vectors())
    src, dst = batch.edge_index
    first = batch.ptr[batch.batch[src]]  # back to atom numbers within each structure
    for k, (s, g) in enumerate(zip(structures, graphs)):
        expected = _ase_edges(s)
        assert len(expected) > 0
        # one structure alone: a (3, 3) cell and every atom in structure 0
        alone = edge_vectors(g.positions, g.cell, g.shifts, g.edge_index, torch.zeros(g.natoms, dtype=torch.long))
        # the same structure inside the batch, with its own cell picked per edge
        mine = batch.batch[src] == k
        batched = _our_edges(src[mine] - first[mine], dst[mine] - first[mine], batch.shifts[mine], vectors[mine])
        for ours in (_our_edges(g.edge_index[0], g.edge_index[1], g.shifts, alone), batched):
            assert ours.keys() == expected.keys()
            for key, d in expected.items():
                np.testing.assert_allclose(ours[key], d, rtol=0, atol=1e-12, err_msg=str(key))


def test_edge_vectors_follow_a_strained_cell():
    # models differentiate edge vectors with respect to the cell for stress: d(vector_e)/d(cell_b) = shift_e
    graphs = [structure_to_graph(s, CUTOFF) for s in _structures()]
    batch = collate_graphs(graphs)
    cell = batch.cell.clone().requires_grad_(True)
    weights = torch.randn(batch.num_edges, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vectors = edge_vectors(batch.positions, cell, batch.shifts, batch.edge_index, batch.batch)
    (grad,) = torch.autograd.grad((vectors * weights).sum(), cell)
    edge_graph = batch.batch[batch.edge_index[0]]
    expected = torch.zeros_like(cell).index_add_(0, edge_graph, batch.shifts[:, :, None] * weights[:, None, :])
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def _assert_same_batch(ours: Batch, reference: Batch) -> None:
    for f in fields(Batch):
        a, b = getattr(ours, f.name), getattr(reference, f.name)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f.name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unlabelled_batch_equals_collate_of_unlabelled_graphs(dtype):
    first, _, molecule_ = _structures()
    # labels on the records must not leak into the batch: only charge/spin, passed explicitly, do
    labelled = [
        first.replace(energy=-3.0, forces=np.ones((first.natoms, 3)), stress=np.eye(3)),
        molecule_.replace(energy=-1.0),
    ]
    unlabelled = [first.replace(charge=1.0), molecule_.replace(spin=2.0)]
    reference = collate_graphs(
        [structure_to_graph(s, CUTOFF, dtype=dtype, index=k) for k, s in zip((5, 7), unlabelled)]
    )
    full = collate_graphs([structure_to_graph(s, CUTOFF) for s in labelled])  # float64 tensors, labels set
    ours = unlabelled_batch(
        full.numbers,
        full.positions,
        full.cell,
        full.pbc,
        full.edge_index,
        full.shifts,
        full.batch,
        charge=[1.0, None],
        spin=[None, 2.0],
        index=[5, 7],
        dtype=dtype,
    )
    _assert_same_batch(ours, reference)
    assert not (ours.energy_mask.any() or ours.forces_mask.any() or ours.stress_mask.any())
    assert ours.charge_mask.tolist() == [True, False] and ours.spin_mask.tolist() == [False, True]
    assert ours.charge.tolist() == [1.0, 0.0] and ours.spin.tolist() == [0.0, 2.0]


def test_unlabelled_batch_defaults():
    structures = _structures()
    reference = collate_graphs([structure_to_graph(s, CUTOFF) for s in structures])  # no labels, index -1
    ours = unlabelled_batch(
        reference.numbers,
        reference.positions,
        reference.cell,
        reference.pbc,
        reference.edge_index,
        reference.shifts,
        reference.batch,
    )
    _assert_same_batch(ours, reference)
    assert ours.index.tolist() == [-1, -1, -1] and not (ours.charge_mask.any() or ours.spin_mask.any())
    # one structure: a (3, 3) cell and (3,) pbc become a batch of one
    g = structure_to_graph(structures[0], CUTOFF)
    one = unlabelled_batch(
        g.numbers, g.positions, g.cell, g.pbc, g.edge_index, g.shifts, torch.zeros(g.natoms, dtype=torch.long)
    )
    _assert_same_batch(one, collate_graphs([g]))


@pytest.mark.parametrize(
    "cell, pbc, expected",
    [
        (np.eye(3) * 5, True, True),
        (np.eye(3) * 5, [False, False, True], True),  # one periodic axis is enough
        (np.eye(3) * 5, False, False),  # a box around a molecule
        (np.zeros((3, 3)), True, False),  # periodic flags without a cell
        ([[4, 0, 0], [2, 0, 0], [0, 0, 4]], True, False),  # two parallel vectors: no volume
        (np.eye(3) * (1.1 * MIN_CELL_VOLUME) ** (1 / 3), True, True),  # a volume just above the threshold
        (np.eye(3) * (0.9 * MIN_CELL_VOLUME) ** (1 / 3), True, False),  # just below
        ([4, 0, 0, 1, 3, 0, 0.5, 0.5, 4], [True, True, False], True),  # a flat list of nine numbers, triclinic
    ],
)
def test_is_periodic(cell, pbc, expected):
    assert is_periodic(cell, pbc) is expected
