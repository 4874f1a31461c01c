"""Training data: readers from a recipe, the train/valid/test split, graph sets, batches and statistics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlip_datasets.errors import DataError
from mlip_datasets.graph import AtomicGraph, Batch, collate_graphs, structure_to_graph
from mlip_datasets.io import open_dataset, write_dataset
from mlip_datasets.split import split_indices
from mlip_datasets.stats import fit_e0s
from mlip_datasets.torch_data import SizeBatchSampler, natoms_of

from .recipe import DataSection, RecipeError

__all__ = ["GraphSet", "TrainingData", "load_training_data", "fit_statistics", "iterate_batches"]

_CACHE_AUTO_LIMIT = 50_000
_STATS_MAX_STRUCTURES = 5_000


class GraphSet:
    """Neighbour graphs of ``reader[indices]`` at ``cutoff``, built on access and optionally kept in memory.

    Args:
        reader: any ``mlip_datasets`` reader.
        indices: the records of ``reader`` that form this set (a split), in order.
        cutoff: neighbour cutoff (the model's).
        dtype: floating-point dtype of positions and labels.
        cache: keep every graph after it is first built (small data sets: later epochs cost no data time).
        source: the file ``reader`` reads, named in errors: a structure with non-finite positions or cell
            (or labels, with ``check_labels``) raises :class:`DataError` naming it and the record.
        check_labels: also reject non-finite energy, forces and stress (training: one such label would make
            every step of its batches NaN).
    """

    def __init__(
        self,
        reader,
        indices: Sequence[int],
        cutoff: float,
        dtype: torch.dtype,
        cache: bool,
        source: str | Path | None = None,
        check_labels: bool = False,
    ):
        self.reader, self.source, self.check_labels = reader, source, check_labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.cutoff, self.dtype = float(cutoff), dtype
        self._cache: dict[int, AtomicGraph] | None = {} if cache else None
        self._natoms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> AtomicGraph:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        record = int(self.indices[i])
        structure = self.reader[record]
        _check_finite(structure, self.source, record, self.check_labels)
        graph = structure_to_graph(structure, self.cutoff, self.dtype, index=record)
        if self._cache is not None:
            self._cache[i] = graph
        return graph

    def structure(self, i: int):
        return self.reader[int(self.indices[i])]

    def natoms(self) -> np.ndarray:
        """Atom count per structure, read once (the batch sampler asks every epoch)."""
        if self._natoms is None:
            self._natoms = natoms_of(self.reader)[self.indices]
        return self._natoms

    def batch(self, positions: Sequence[int]) -> Batch:
        return collate_graphs([self[int(i)] for i in positions])


def _check_finite(structure, source, record: int, labels: bool) -> None:
    """NaN/inf in positions or cell break the neighbour search, in labels every loss: name the record."""
    for name in ("positions", "cell", *(("energy", "forces", "stress") if labels else ())):
        value = getattr(structure, name, None)
        if value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise DataError(source, f"{name} has NaN or inf values; fix or drop this structure", record=record)


@dataclass
class TrainingData:
    train: GraphSet
    valid: GraphSet | None
    test: GraphSet | None
    sources: dict[str, str]


def _generate(spec: dict, run_dir: Path, progress: Callable[[str, int], Callable] | None) -> Path:
    """Write the recipe's generated data set into the run directory once (reused on resume)."""
    from mlip_datasets.generate import generate

    target = run_dir / "data" / "generated"
    if target.exists():
        return target
    spec = dict(spec)
    kind, n = spec.pop("kind", "slab-adsorbate"), int(spec.pop("n", 200))
    seed = int(spec.pop("seed", 0))
    try:
        structures = generate(kind, n, seed, **spec)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"recipe: data.generate: {err}") from None
    if progress is None:
        write_dataset(target, structures)
    else:
        with progress(f"generating {n} {kind} structures", n) as update:
            write_dataset(target, structures, progress=update)
    return target


def load_training_data(
    section: DataSection, cutoff: float, dtype: torch.dtype, run_dir: Path, progress=None
) -> TrainingData:
    """Open the recipe's data, split it, and wrap each part in a :class:`GraphSet`."""
    train_path = Path(section.train) if section.train else _generate(section.generate or {}, run_dir, progress)
    reader = open_dataset(train_path)
    n = len(reader)
    if n == 0:
        raise RecipeError(f"{train_path}: the training data set is empty")
    sources = {"train": str(train_path)}
    test = None
    if section.valid:
        train_idx, valid_reader, valid_idx = np.arange(n), open_dataset(section.valid), None
        valid_idx = np.arange(len(valid_reader))
        sources["valid"] = str(section.valid)
    else:
        parts = split_indices(n, section.split, section.split_seed)
        train_idx, valid_idx, valid_reader = parts[0], parts[1], reader
        sources["valid"] = f"{train_path} (split {section.split}, seed {section.split_seed})"
        if len(parts) == 3:
            test = (reader, parts[2])
    if section.test:
        test_reader = open_dataset(section.test)
        test = (test_reader, np.arange(len(test_reader)))
        sources["test"] = str(section.test)
    if section.max_train:
        train_idx = train_idx[: section.max_train]
    if section.max_valid:
        valid_idx = valid_idx[: section.max_valid]
    if len(train_idx) == 0:
        raise RecipeError(f"{train_path}: no training structures left after the split {section.split}")
    cache = section.cache_graphs in ("yes", True) or (section.cache_graphs == "auto" and n <= _CACHE_AUTO_LIMIT)
    valid_source = section.valid or train_path
    test_source = section.test or train_path
    return TrainingData(
        train=GraphSet(reader, train_idx, cutoff, dtype, cache, train_path, check_labels=True),
        valid=GraphSet(valid_reader, valid_idx, cutoff, dtype, cache, valid_source, check_labels=True)
        if len(valid_idx)
        else None,
        test=(
            GraphSet(test[0], test[1], cutoff, dtype, cache, test_source, check_labels=True)
            if test is not None and len(test[1])
            else None
        ),
        sources=sources,
    )


def fit_statistics(train: GraphSet, elements: list[int] | None) -> dict:
    """Elements, least-squares E0s, interaction-energy shift, force-RMS scale and neighbours per atom.

    Uses at most 5,000 structures spread evenly over the training set (every one for small sets).

    Raises:
        DataError: none of those structures has an energy, forces or stress label (nothing to train on).
    """
    count = len(train)
    picks = np.unique(np.linspace(0, count - 1, min(count, _STATS_MAX_STRUCTURES)).round().astype(np.int64))
    graphs = [train[int(i)] for i in picks]
    if not any(g.energy is not None or g.forces is not None or g.stress is not None for g in graphs):
        checked = "any" if len(graphs) == count else f"the {len(graphs)} sampled"
        raise DataError(
            train.source,
            f"no energy, forces or stress labels on {checked} of the {count} training structures: nothing to train on",
        )
    present = sorted({int(z) for g in graphs for z in g.numbers.tolist()})
    if elements:
        missing = sorted(set(present) - set(elements))
        if missing:
            raise RecipeError(
                f"recipe: the training data has elements {missing} that model.elements {sorted(elements)} does not list"
            )
    elements = list(elements) if elements else present
    col = {z: k for k, z in enumerate(elements)}
    labelled = [g for g in graphs if g.energy is not None]
    stats: dict = {"elements": elements, "structures": len(graphs), "e0s": {}, "shift": 0.0, "scale": 1.0}
    if labelled:
        comp = np.zeros((len(labelled), len(elements)))
        for r, g in enumerate(labelled):
            for z in g.numbers.tolist():
                comp[r, col[int(z)]] += 1
        energies = np.array([float(g.energy) for g in labelled])
        e0s = fit_e0s(comp, energies, elements)
        residual = (energies - comp @ np.array([e0s[z] for z in elements])) / comp.sum(axis=1)
        stats["e0s"] = e0s
        stats["shift"] = float(residual.mean())
    forces = [g.forces for g in graphs if g.forces is not None]
    if forces:
        rms = float(torch.cat([f.reshape(-1) for f in forces]).double().pow(2).mean().sqrt())
        stats["scale"] = rms if rms > 1e-8 else 1.0
    atoms = sum(g.natoms for g in graphs)
    stats["avg_num_neighbors"] = max(sum(g.num_edges for g in graphs) / max(atoms, 1), 1.0)
    return stats


def iterate_batches(
    graphs: GraphSet,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    skip: int = 0,
) -> Iterator[tuple[int, Batch, float]]:
    """This process's batches for ``epoch``: ``(position in epoch, batch, seconds spent preparing it)``.

    Packing depends only on (seed, epoch), so every process and every resumed run sees the same batches;
    ``skip`` resumes in the middle of an epoch.
    """
    import time

    sampler = SizeBatchSampler(
        graphs.natoms(), max_structures=batch_size, shuffle=shuffle, seed=seed, num_replicas=world, rank=rank
    )
    sampler.set_epoch(epoch)
    for k, positions in enumerate(sampler.batches()):
        if k < skip:
            continue
        start = time.perf_counter()
        batch = graphs.batch(positions)
        yield k, batch, time.perf_counter() - start
