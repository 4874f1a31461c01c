"""torch ``Dataset`` over any reader, and a batch sampler that packs structures by atoms or edges.

Typical use::

    reader = open_dataset("train/")                      # any Reader; the native store is the fast one
    data = AtomicGraphDataset(reader, cutoff=5.0, dtype=torch.float32)
    sampler = SizeBatchSampler(data.natoms_array(), max_atoms=2048, shuffle=True, seed=0)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate_graphs, num_workers=4)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for batch in loader: ...

Worker safety: readers open OS handles lazily and reopen after a fork, so the same dataset object works with
``num_workers=0`` and with worker processes, and gives the same batches either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .formats.base import Reader
from .graph import AtomicGraph, Batch, collate_graphs, structure_to_graph

__all__ = ["AtomicGraphDataset", "SizeBatchSampler", "Batch", "collate_graphs", "natoms_of"]


def natoms_of(source) -> np.ndarray:
    """Atom counts of every record of a reader or dataset, without decoding where the format stores them.

    Shapes:
        -> (len(source),) int64.
    """
    if isinstance(source, AtomicGraphDataset):
        source = source.reader
    fast = getattr(source, "natoms_array", None)
    if fast is not None:
        return np.asarray(fast(), dtype=np.int64)
    if isinstance(source, Reader):
        return np.fromiter((source.natoms(i) for i in range(len(source))), dtype=np.int64, count=len(source))
    return np.asarray(source, dtype=np.int64).reshape(-1)


class AtomicGraphDataset(Dataset):
    """Neighbour graphs of the records of ``reader``, built on access.

    Args:
        reader: any :class:`~mlip_datasets.formats.base.Reader`.
        cutoff: neighbour cutoff in Angstrom.
        dtype: floating-point dtype of positions, cell, shifts and labels.
        transform: optional ``AtomicGraph -> AtomicGraph`` applied to every item (e.g. augmentation).
        backend: neighbour-list backend (see :func:`mlip_datasets.neighbors.neighbor_list`).
    """

    def __init__(
        self,
        reader: Reader,
        cutoff: float,
        dtype: torch.dtype = torch.float64,
        transform: Callable[[AtomicGraph], AtomicGraph] | None = None,
        backend: str = "auto",
    ):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.reader = reader
        self.cutoff = float(cutoff)
        self.dtype = dtype
        self.transform = transform
        self.backend = backend

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> AtomicGraph:
        graph = structure_to_graph(self.reader[index], self.cutoff, self.dtype, self.backend, index=int(index))
        return graph if self.transform is None else self.transform(graph)

    def natoms(self, index: int) -> int:
        return self.reader.natoms(index)

    def natoms_array(self) -> np.ndarray:
        """Atom count per record, read from the store's metadata where available. Shapes: (len(self),)."""
        return natoms_of(self.reader)

    def num_edges(self) -> np.ndarray:
        """Exact edge count per record. Decodes every record and builds its graph: cache the result.

        Shapes:
            -> (len(self),) int64.
        """
        return np.fromiter((self[i].num_edges for i in range(len(self))), dtype=np.int64, count=len(self))


class SizeBatchSampler(Sampler[list[int]]):
    """Batches of indices packed up to a number of atoms, edges and/or structures.

    Packing is greedy in (shuffled) order: a batch closes when the next structure would exceed a limit; a
    structure larger than a limit on its own gets a batch to itself. The order depends only on ``seed`` and the
    epoch (:meth:`set_epoch`), so every process computes the same packing; with ``num_replicas > 1`` rank ``r``
    takes every ``num_replicas``-th batch starting at ``r``. Batch counts are equalised across ranks (needed for
    collective ops) by repeating batches from the start, or by dropping the surplus when ``drop_last``.

    Args:
        natoms: atom count per structure, or a reader/dataset to read them from (no records decoded for stores
            that index them, such as the native store).
        max_atoms, max_edges, max_structures: limits per batch; at least one is required.
        num_edges: edge count per structure, needed with ``max_edges`` (exact from
            :meth:`AtomicGraphDataset.num_edges`, or an estimate such as ``natoms * average neighbours``).
        shuffle, seed: shuffle every epoch with a generator seeded by ``(seed, epoch)``.
        drop_last: drop the final batch of the packing (the remainder, usually under-filled).
        num_replicas, rank: data-parallel world size and this process's rank.

    Shapes:
        natoms (S,), num_edges (S,).
    """

    def __init__(
        self,
        natoms,
        max_atoms: int | None = None,
        max_edges: int | None = None,
        max_structures: int | None = None,
        *,
        num_edges: Sequence[int] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if max_atoms is None and max_edges is None and max_structures is None:
            raise ValueError("give at least one of max_atoms, max_edges, max_structures")
        for name, value in (("max_atoms", max_atoms), ("max_edges", max_edges), ("max_structures", max_structures)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if max_edges is not None and num_edges is None:
            raise ValueError("max_edges needs num_edges= (AtomicGraphDataset.num_edges() or an estimate)")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.natoms = natoms_of(natoms)
        self.num_edges = None if num_edges is None else np.asarray(num_edges, dtype=np.int64).reshape(-1)
        if self.num_edges is not None and len(self.num_edges) != len(self.natoms):
            raise ValueError(f"num_edges has {len(self.num_edges)} entries for {len(self.natoms)} structures")
        self.max_atoms, self.max_edges, self.max_structures = max_atoms, max_edges, max_structures
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``; call before iterating, on every rank."""
        self.epoch = int(epoch)

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.natoms))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.natoms))

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        inf = np.iinfo(np.int64).max
        max_atoms = self.max_atoms or inf
        max_edges = self.max_edges or inf
        max_structures = self.max_structures or inf
        atoms = self.natoms[order].tolist()
        edges = self.num_edges[order].tolist() if self.num_edges is not None else [0] * len(order)
        batches: list[list[int]] = []
        current: list[int] = []
        n_atoms = n_edges = 0
        for i, a, e in zip(order.tolist(), atoms, edges):
            if current and (n_atoms + a > max_atoms or n_edges + e > max_edges or len(current) >= max_structures):
                batches.append(current)
                current, n_atoms, n_edges = [], 0, 0
            current.append(i)
            n_atoms += a
            n_edges += e
        if current:
            batches.append(current)
        return batches

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (computed once per epoch)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        batches = self._pack(self._order())
        if self.drop_last and batches:
            batches = batches[:-1]
        if self.num_replicas > 1 and batches:
            remainder = len(batches) % self.num_replicas
            if self.drop_last:
                batches = batches[: len(batches) - remainder]
            elif remainder:
                extra = self.num_replicas - remainder
                batches = batches + [batches[k % len(batches)] for k in range(extra)]
        mine = batches[self.rank :: self.num_replicas]
        self._cache = (self.epoch, mine)
        return mine

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
