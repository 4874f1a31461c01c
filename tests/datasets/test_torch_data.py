"""Graphs, batches, the size-aware sampler and multi-worker loading over a native store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from torch.utils.data import DataLoader

from mlip_datasets.errors import DataError
from mlip_datasets.formats.native import NativeReader, write
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure
from mlip_datasets.torch_data import AtomicGraphDataset, GraphLoader, SizeBatchSampler

CUTOFF = 4.0


def emt_structures(n: int, seed: int = 0) -> list[Structure]:
    """Rattled Cu bulk and molecules with EMT labels; every third record lacks forces, some lack energy."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        if k % 2:
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, int(rng.integers(1, 3)))
        else:
            atoms = molecule(["CH4", "H2O", "C2H6", "CH3CH2OH"][k % 4])
            atoms.pbc = False
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        s = Structure(
            numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell.array,
            pbc=atoms.pbc,
            energy=atoms.get_potential_energy() if k % 5 else None,
            forces=atoms.get_forces() if k % 3 else None,
            stress=atoms.get_stress() if atoms.pbc.all() else None,
            charge=0.0 if k % 4 == 0 else None,
            sid=k,
        )
        out.append(s)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "store"
    structures = emt_structures(24)
    write(path, structures, shards=2)
    return path, structures


def test_graph_edges_and_dtype():
    s = emt_structures(2)[1]
    g = structure_to_graph(s, CUTOFF, dtype=torch.float32)
    assert g.positions.dtype == g.shifts.dtype == g.forces.dtype == torch.float32
    assert g.edge_index.dtype == g.numbers.dtype == torch.long and g.edge_index.shape[0] == 2
    src, dst = g.edge_index
    vec = g.positions[dst] - g.positions[src] + g.shifts @ g.cell
    assert vec.norm(dim=1).max() < CUTOFF and g.num_edges > 0
    assert g.has("forces") and not g.has("spin")


def test_collate_offsets_and_masks(store):
    _, structures = store
    graphs = [structure_to_graph(s, CUTOFF, index=k) for k, s in enumerate(structures[:6])]
    b = collate_graphs(graphs)
    sizes = [g.natoms for g in graphs]
    assert b.num_graphs == 6 and b.ptr.tolist() == np.concatenate([[0], np.cumsum(sizes)]).tolist()
    assert b.batch.tolist() == sum(([k] * n for k, n in enumerate(sizes)), [])
    assert b.num_edges == sum(g.num_edges for g in graphs)
    # every edge stays inside its structure and keeps its vector
    assert torch.equal(b.batch[b.edge_index[0]], b.batch[b.edge_index[1]])
    expected = torch.cat(
        [g.positions[g.edge_index[1]] - g.positions[g.edge_index[0]] + g.shifts @ g.cell for g in graphs]
    )
    torch.testing.assert_close(b.edge_vectors(), expected, rtol=0, atol=1e-12)
    assert b.energy_mask.tolist() == [s.energy is not None for s in structures[:6]]
    assert b.forces_mask.tolist() == sum(([s.forces is not None] * s.natoms for s in structures[:6]), [])
    assert b.charge_mask.tolist() == [s.charge is not None for s in structures[:6]]
    assert not b.spin_mask.any() and b.index.tolist() == list(range(6))
    for k, s in enumerate(structures[:6]):
        if s.energy is None:
            assert b.energy[k] == 0
        else:
            assert b.energy[k].item() == s.energy
        if s.forces is not None:
            assert torch.equal(b.forces[b.ptr[k] : b.ptr[k + 1]], torch.from_numpy(s.forces))
    moved = b.to("cpu", dtype=torch.float32)
    assert moved.positions.dtype == torch.float32 and moved.numbers.dtype == torch.long


def test_sampler_respects_limits_and_covers_everything():
    natoms = np.random.default_rng(0).integers(1, 60, 200)
    sampler = SizeBatchSampler(natoms, max_atoms=150, shuffle=True, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(natoms[b].sum() <= 150 for b in batches)
    assert len(sampler) == len(batches)
    # greedy packing: a batch only closes when the next structure would not fit
    assert all(natoms[a].sum() + natoms[b[0]] > 150 for a, b in zip(batches, batches[1:]))


def test_sampler_limits_on_edges_and_structures():
    rng = np.random.default_rng(1)
    natoms = rng.integers(1, 30, 100)
    edges = natoms * rng.integers(5, 40, 100)
    sampler = SizeBatchSampler(natoms, max_edges=2000, max_structures=7, num_edges=edges, shuffle=False)
    batches = list(sampler)
    assert [i for b in batches for i in b] == list(range(100))  # no shuffle: input order
    assert all(edges[b].sum() <= 2000 or len(b) == 1 for b in batches)
    assert max(len(b) for b in batches) <= 7
    with pytest.raises(ValueError, match="num_edges"):
        SizeBatchSampler(natoms, max_edges=100)
    with pytest.raises(ValueError, match="at least one"):
        SizeBatchSampler(natoms)


def test_oversized_structure_gets_its_own_batch():
    batches = list(SizeBatchSampler([5, 500, 5], max_atoms=100, shuffle=False))
    assert batches == [[0], [1], [2]]


def test_sampler_is_deterministic_per_seed_and_epoch():
    natoms = np.random.default_rng(2).integers(1, 50, 300)
    a = SizeBatchSampler(natoms, max_atoms=200, seed=7)
    b = SizeBatchSampler(natoms, max_atoms=200, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(SizeBatchSampler(natoms, max_atoms=200, seed=8)) != first


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_distributed_ranks(drop_last):
    natoms = np.random.default_rng(3).integers(1, 50, 301)
    ranks = [
        SizeBatchSampler(natoms, max_atoms=128, seed=1, num_replicas=3, rank=r, drop_last=drop_last) for r in range(3)
    ]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
    full = list(SizeBatchSampler(natoms, max_atoms=128, seed=1))
    seen = [tuple(b) for rank in per_rank for b in rank]
    if drop_last:
        assert len(set(seen)) == len(seen) and len(seen) <= len(full) - 1
    else:
        assert {tuple(b) for b in full} == set(seen)  # everything once, a few repeats as padding
    assert not set(map(tuple, per_rank[0])) & set(map(tuple, per_rank[1])) or not drop_last


def test_sampler_reads_natoms_without_decoding(store):
    path, structures = store
    reader = NativeReader(path)

    def refuse(index):
        raise AssertionError("the sampler decoded a record")

    reader.__getitem__ = refuse  # instance attribute: only a direct call would hit it
    dataset = AtomicGraphDataset(reader, CUTOFF)
    assert dataset.natoms_array().tolist() == [s.natoms for s in structures]
    sampler = SizeBatchSampler(dataset, max_atoms=40)
    assert sorted(i for b in sampler for i in b) == list(range(len(structures)))


def _batches(loader):
    out = []
    for b in loader:
        out.append({k: v.clone() for k, v in vars(b).items()})
    return out


def test_dataloader_workers_give_the_same_batches(store):
    path, _ = store
    dataset = AtomicGraphDataset(NativeReader(path), CUTOFF, dtype=torch.float32)
    sampler = SizeBatchSampler(dataset, max_atoms=48, seed=5)
    serial = _batches(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_graphs, num_workers=0))
    parallel = _batches(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_graphs, num_workers=2))
    assert len(serial) == len(parallel) == len(sampler) > 2
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_dataset_transform_and_edge_counts(store):
    path, structures = store

    def shift_up(g):
        g.positions = g.positions + 1.0
        return g

    dataset = AtomicGraphDataset(NativeReader(path), CUTOFF, transform=shift_up)
    g = dataset[3]
    assert torch.equal(g.positions, torch.from_numpy(structures[3].positions) + 1.0) and g.index == 3
    counts = AtomicGraphDataset(NativeReader(path), CUTOFF).num_edges()
    assert counts[3] == g.num_edges and counts.shape == (len(structures),)


def test_subset_maps_items_to_records_and_caches_per_process(store):
    path, structures = store
    records = [7, 2, 19]
    dataset = AtomicGraphDataset(NativeReader(path), CUTOFF, indices=records, cache=True)
    assert len(dataset) == 3 and dataset.natoms_array().tolist() == [structures[r].natoms for r in records]
    for item, record in enumerate(records):
        g = dataset[item]
        assert g.index == record and torch.equal(g.positions, torch.from_numpy(structures[record].positions))
    assert dataset[1] is dataset[1]  # built once, then kept
    assert dataset.batch([2, 0]).index.tolist() == [19, 7]
    sampler = SizeBatchSampler(dataset, max_structures=2, shuffle=False)
    assert list(sampler) == [[0, 1], [2]]  # positions in the subset, not record numbers
    dataset.set_cache(False)
    assert dataset[1] is not dataset[1]


def test_non_finite_positions_always_and_labels_when_asked_name_file_and_record(tmp_path):
    structures = emt_structures(4)
    structures[1].positions = structures[1].positions.copy()
    structures[1].positions[0, 2] = np.nan
    structures[2].forces = np.full_like(structures[2].forces, np.inf)
    path = tmp_path / "mixed"
    write(path, structures)
    plain = AtomicGraphDataset(NativeReader(path), CUTOFF)
    assert plain[2].forces.isinf().all()  # evaluation-style: a non-finite label is the caller's to report
    with pytest.raises(DataError, match=r"record 1: positions has NaN or inf values") as err:
        plain[1]
    assert err.value.path == str(path)
    checked = AtomicGraphDataset(NativeReader(path), CUTOFF, indices=[3, 2], check_labels=True, source="named.xyz")
    assert checked[0].natoms == structures[3].natoms
    with pytest.raises(DataError, match=r"^named\.xyz: record 2: forces has NaN or inf values"):
        checked[1]


def test_sampler_start_resumes_inside_an_epoch():
    natoms = np.random.default_rng(4).integers(1, 50, 100)
    sampler = SizeBatchSampler(natoms, max_atoms=120, seed=2)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start=4)
    assert list(sampler) == full[4:] and len(sampler) == len(full) - 4
    assert sampler.batches() == full  # the packing itself does not move


@pytest.mark.parametrize("workers", [0, 2])
def test_graph_loader_same_batches_and_error_unchanged(tmp_path, store, workers):
    path, _ = store
    dataset = AtomicGraphDataset(NativeReader(path), CUTOFF, dtype=torch.float32)
    sampler = SizeBatchSampler(dataset, max_atoms=48, seed=5)
    sampler.set_epoch(1)
    reference = [{k: v.clone() for k, v in vars(dataset.batch(b)).items()} for b in sampler]
    rng_before = torch.get_rng_state()
    got = _batches(GraphLoader(dataset, sampler, num_workers=workers))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global random stream is left alone
    assert len(got) == len(reference) > 2
    for a, b in zip(reference, got):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    structures = emt_structures(6)
    structures[4].energy = float("nan")
    bad = tmp_path / "bad"
    write(bad, structures)
    loader = GraphLoader(
        AtomicGraphDataset(NativeReader(bad), CUTOFF, check_labels=True),
        SizeBatchSampler([1] * 6, max_structures=2, shuffle=False),
        num_workers=workers,
    )
    with pytest.raises(DataError) as err:
        list(loader)
    # the error itself, not torch's "Caught DataError in DataLoader worker process" wrapper
    assert (
        type(err.value) is DataError
        and str(err.value) == f"{bad}: record 4: energy has NaN or inf values; fix or drop this structure"
    )


def _interrupt_own_worker(graph):
    """Transform: a worker building record 3 gets SIGINT and SIGTERM (as from a terminal or batch scheduler that
    signals the whole process group)."""
    import os
    import signal

    from torch.utils.data import get_worker_info

    if graph.index == 3 and get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    return graph


def test_graph_loader_workers_leave_interrupts_to_the_main_process(store):
    path, structures = store
    dataset = AtomicGraphDataset(NativeReader(path), CUTOFF, transform=_interrupt_own_worker)
    sampler = SizeBatchSampler(dataset, max_structures=2, shuffle=False)
    got = [b.index.tolist() for b in GraphLoader(dataset, sampler, num_workers=1)]
    assert got == [list(range(k, min(k + 2, len(structures)))) for k in range(0, len(structures), 2)]
