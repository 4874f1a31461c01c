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
``num_workers=0`` and with worker processes, and gives the same batches either way. :class:`GraphLoader` is that
``DataLoader`` set up for training: a :class:`DataError` raised in a worker reaches the caller as itself (not
wrapped in torch's traceback text), workers leave SIGINT/SIGTERM to the main process, and the loader draws no
number from torch's global generator (so it does not shift a run's random stream, whatever ``num_workers``).
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import DataError
from .formats.base import Reader
from .graph import AtomicGraph, Batch, collate_graphs, structure_to_graph

__all__ = [
    "AtomicGraphDataset",
    "SizeBatchSampler",
    "GraphLoader",
    "Batch",
    "collate_graphs",
    "natoms_of",
    "check_finite",
    "graph_bytes_estimate",
]


def natoms_of(source) -> np.ndarray:
    """Atom counts of every record of a reader or dataset, without decoding where the format stores them.

    Shapes:
        -> (len(source),) int64.
    """
    if isinstance(source, AtomicGraphDataset):
        return source.natoms_array()
    fast = getattr(source, "natoms_array", None)
    if fast is not None:
        return np.asarray(fast(), dtype=np.int64)
    if isinstance(source, Reader):
        return np.fromiter((source.natoms(i) for i in range(len(source))), dtype=np.int64, count=len(source))
    return np.asarray(source, dtype=np.int64).reshape(-1)


def check_finite(structure, source, record: int, labels: bool) -> None:
    """Raise :class:`DataError` naming ``source`` and ``record`` if positions or cell (and, with ``labels``,
    energy, forces or stress) hold NaN or inf: the first break the neighbour search, the others every loss."""
    for name in ("positions", "cell", *(("energy", "forces", "stress") if labels else ())):
        value = getattr(structure, name, None)
        if value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise DataError(source, f"{name} has NaN or inf values; fix or drop this structure", record=record)


def graph_bytes_estimate(natoms: np.ndarray, edges_per_atom: float, dtype: torch.dtype) -> int:
    """Rough memory of the graphs of structures with ``natoms`` atoms (for deciding whether to cache them).

    Per atom: number (8 bytes), positions and forces (6 floats); per edge: two int64 indices and a shift
    (3 floats); per graph ~2 KiB of tensor and object overhead.
    """
    item = torch.empty((), dtype=dtype).element_size()
    atoms = float(np.sum(natoms))
    return int(atoms * (8 + 6 * item) + atoms * edges_per_atom * (16 + 3 * item) + 2048 * len(natoms))


class AtomicGraphDataset(Dataset):
    """Neighbour graphs of the records of ``reader`` (or of the subset ``indices``), built on access.

    Every item is checked: non-finite positions or cell (and labels, with ``check_labels``) raise
    :class:`DataError` naming the file and the record.

    Args:
        reader: any :class:`~mlip_datasets.formats.base.Reader`.
        cutoff: neighbour cutoff in Angstrom.
        dtype: floating-point dtype of positions, cell, shifts and labels.
        transform: optional ``AtomicGraph -> AtomicGraph`` applied to every item (e.g. augmentation).
        backend: neighbour-list backend (see :func:`mlip_datasets.neighbors.neighbor_list`).
        indices: the records of ``reader`` that form this dataset (a split), in order; item ``i`` is record
            ``indices[i]`` and its graph's ``index`` is that record number. Default: every record.
        check_labels: also reject non-finite energy, forces and stress (training: one such label would make
            every step of its batches NaN).
        cache: keep every graph after it is first built (the transform, which must not change tensors in place,
            is applied to a copy after the cache). The cache
            lives in the process that builds the graphs: use it with ``num_workers=0`` (each worker process
            would otherwise build and hold its own copy).
        source: the file named in errors (default: ``reader.path``).
        fixed_tags: atoms whose tag is listed count as fixed where a record marks none (OC20: ``[0]``).
    """

    def __init__(
        self,
        reader: Reader,
        cutoff: float,
        dtype: torch.dtype = torch.float64,
        transform: Callable[[AtomicGraph], AtomicGraph] | None = None,
        backend: str = "auto",
        *,
        indices: Sequence[int] | None = None,
        check_labels: bool = False,
        cache: bool = False,
        source: str | Path | None = None,
        fixed_tags: Sequence[int] | None = None,
    ):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.reader = reader
        self.cutoff = float(cutoff)
        self.dtype = dtype
        self.transform = transform
        self.backend = backend
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        self.check_labels = check_labels
        self.source = source if source is not None else getattr(reader, "path", None)
        self.fixed_tags = None if fixed_tags is None else [int(t) for t in fixed_tags]
        self._cache: dict[int, AtomicGraph] | None = {} if cache else None
        self._natoms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.reader) if self.indices is None else len(self.indices)

    def record(self, index: int) -> int:
        """The reader's record number of item ``index``."""
        return int(index) if self.indices is None else int(self.indices[index])

    @property
    def caches(self) -> bool:
        return self._cache is not None

    def set_cache(self, enabled: bool) -> None:
        """Start (or stop and drop) keeping built graphs in this process's memory."""
        if not enabled:
            self._cache = None
        elif self._cache is None:
            self._cache = {}

    def __getitem__(self, index: int) -> AtomicGraph:
        graph = None if self._cache is None else self._cache.get(int(index))
        if graph is None:
            record = self.record(index)
            structure = self.reader[record]
            check_finite(structure, self.source, record, self.check_labels)
            graph = structure_to_graph(
                structure, self.cutoff, self.dtype, self.backend, index=record, fixed_tags=self.fixed_tags
            )
            if self._cache is not None:
                self._cache[int(index)] = graph
        if self.transform is None:
            return graph
        return self.transform(copy.copy(graph) if self._cache is not None else graph)

    def batch(self, positions: Sequence[int]) -> Batch:
        """The items at ``positions`` collated into one batch, built in this process."""
        return collate_graphs([self[int(i)] for i in positions])

    def natoms(self, index: int) -> int:
        return self.reader.natoms(self.record(index))

    def natoms_array(self) -> np.ndarray:
        """Atom count per item, read once from the store's metadata where available. Shapes: (len(self),)."""
        if self._natoms is None:
            counts = natoms_of(self.reader)
            self._natoms = counts if self.indices is None else counts[self.indices]
        return self._natoms

    def num_edges(self) -> np.ndarray:
        """Exact edge count per item. Decodes every record and builds its graph: cache the result.

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
        self.start = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the shuffle of ``epoch``; call before iterating, on every rank.

        ``start``: iterate from this rank's batch ``start`` of the epoch (resuming in the middle of an epoch);
        :meth:`batches` still returns all of them.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch, self.start = int(epoch), int(start)

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
        return iter(self.batches()[self.start :])

    def __len__(self) -> int:
        return max(len(self.batches()) - self.start, 0)


class _WorkerFailure:
    """A :class:`DataError` carried out of a worker as a batch, so that it is raised again unchanged."""

    def __init__(self, error: DataError):
        self.error = error


class _CollatedBatches(Dataset):
    """``dataset`` whose batch fetch (``__getitems__``) collates, and returns a DataError instead of raising it
    (torch would re-raise it as a new exception built from its traceback text)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]):
        try:
            return collate_graphs([self.dataset[int(i)] for i in indices])
        except DataError as err:
            return _WorkerFailure(err)


def _as_collated(batch):
    return batch


def _leave_interrupts_to_main(worker_id: int) -> None:
    """Workers ignore SIGINT/SIGTERM (a terminal's Ctrl-C reaches the whole process group): the main process
    decides when to stop, and shuts its workers down; workers also exit by themselves once it is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class GraphLoader:
    """Batches of ``dataset`` in the order of ``batch_sampler``, built by ``num_workers`` worker processes
    (neighbour lists included) up to ``prefetch_factor`` batches per worker ahead, or in this process with 0.

    The batches are the same whatever ``num_workers`` (workers return them in sampler order); a
    :class:`DataError` raised while building one is raised here unchanged. Workers are started for each pass
    over the sampler and stopped when it ends or is abandoned (``break``, an exception), so no process outlives
    the loop that uses it.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_sampler: Sampler[list[int]],
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset, self.batch_sampler, self.num_workers = dataset, batch_sampler, int(num_workers)
        workers = self.num_workers > 0
        self._loader = DataLoader(
            _CollatedBatches(dataset),
            batch_sampler=batch_sampler,
            collate_fn=_as_collated,
            num_workers=self.num_workers,
            prefetch_factor=prefetch_factor if workers else None,
            worker_init_fn=_leave_interrupts_to_main if workers else None,
            pin_memory=pin_memory,
            # the workers' base seed is drawn from this generator, not from torch's global one
            generator=torch.Generator().manual_seed(0),
        )

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Batch]:
        batches = iter(self._loader)
        try:
            for batch in batches:
                if isinstance(batch, _WorkerFailure):
                    raise batch.error
                yield batch
        finally:
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
