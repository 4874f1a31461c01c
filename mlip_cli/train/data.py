"""Training data: readers from a recipe, the train/valid/test split, statistics, and the training batches.

Every split is an :class:`~mlip_datasets.torch_data.AtomicGraphDataset` over its records; training batches come
from a :class:`~mlip_datasets.torch_data.GraphLoader` (worker processes build the neighbour lists ahead of the
step) packed by a :class:`~mlip_datasets.torch_data.SizeBatchSampler`. See :func:`plan_loading` for the knobs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlip_datasets.errors import DataError
from mlip_datasets.graph import Batch
from mlip_datasets.io import open_dataset, write_dataset
from mlip_datasets.label_kind import label_kind
from mlip_datasets.split import split_indices
from mlip_datasets.stats import isolated_atoms
from mlip_datasets.torch_data import (
    AtomicGraphDataset,
    GraphLoader,
    SizeBatchSampler,
    graph_bytes_estimate,
    natoms_of,
)

from .e0s import resolve_e0s
from .recipe import DataSection, LossSection, RecipeError

__all__ = ["TrainingData", "TrainBatches", "load_training_data", "fit_statistics", "plan_loading"]

_CACHE_BUDGET_BYTES = 1 << 30  # cache_graphs: auto keeps graphs in memory up to about this much
_MAX_AUTO_WORKERS = 4
_STATS_MAX_STRUCTURES = 5_000


@dataclass
class TrainingData:
    train: AtomicGraphDataset
    valid: AtomicGraphDataset | None
    test: AtomicGraphDataset | None
    sources: dict[str, str]
    isolated_e0s: dict[int, float] = dataclasses.field(default_factory=dict)
    """Energies of the isolated atoms found in the training data (kept out of every split)."""
    energy_kind: str | None = None
    """What the training energies are (``total``, ``adsorption``, ``oc22_total``; None: not stated)."""


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
    """Open the recipe's data, split it, and wrap each part in an :class:`AtomicGraphDataset` (graphs built on
    access, every record checked for non-finite values; caching is decided by :func:`plan_loading`)."""
    train_path = Path(section.train) if section.train else _generate(section.generate or {}, run_dir, progress)
    keys = section.label_keys()
    reader = open_dataset(train_path, keys=keys, units=section.units)
    n = len(reader)
    if n == 0:
        raise RecipeError(f"{train_path}: the training data set is empty")
    energy_kind, at_positions = label_kind(reader)
    if not at_positions and not section.allow_is2re:
        raise DataError(
            train_path,
            "IS2RE labels: the energies belong to the relaxed structures, not to the stored initial positions; "
            "set data.allow_is2re: true to train a direct IS2RE model on them",
        )
    isolated = isolated_atoms(reader, natoms_of(reader))
    sources = {"train": str(train_path)}
    test = None
    if section.valid:
        train_idx, valid_reader, valid_idx = (
            np.arange(n),
            open_dataset(section.valid, keys=keys, units=section.units),
            None,
        )
        valid_idx = np.arange(len(valid_reader))
        sources["valid"] = str(section.valid)
    else:
        parts = split_indices(n, section.split, section.split_seed)
        train_idx, valid_idx, valid_reader = parts[0], parts[1], reader
        sources["valid"] = f"{train_path} (split {section.split}, seed {section.split_seed})"
        if len(parts) == 3:
            test = (reader, parts[2])
    if section.test:
        test_reader = open_dataset(section.test, keys=keys, units=section.units)
        test = (test_reader, np.arange(len(test_reader)))
        sources["test"] = str(section.test)
    if isolated:  # reference energies (E0s), not training data
        drop = np.array([record for record, _ in isolated.values()])
        train_idx = train_idx[~np.isin(train_idx, drop)]
        if valid_reader is reader:
            valid_idx = valid_idx[~np.isin(valid_idx, drop)]
        if test is not None and test[0] is reader:
            test = (reader, test[1][~np.isin(test[1], drop)])
    if section.max_train:
        train_idx = train_idx[: section.max_train]
    if section.max_valid:
        valid_idx = valid_idx[: section.max_valid]
    if len(train_idx) == 0:
        raise RecipeError(f"{train_path}: no training structures left after the split {section.split}")

    def graphs(part_reader, indices, source) -> AtomicGraphDataset:
        return AtomicGraphDataset(
            part_reader,
            cutoff,
            dtype,
            indices=indices,
            check_labels=True,
            source=source,
            fixed_tags=section.fixed_tags,
        )

    return TrainingData(
        train=graphs(reader, train_idx, train_path),
        valid=graphs(valid_reader, valid_idx, section.valid or train_path) if len(valid_idx) else None,
        test=graphs(test[0], test[1], section.test or train_path) if test is not None and len(test[1]) else None,
        sources=sources,
        isolated_e0s={z: energy for z, (_, energy) in isolated.items()},
        energy_kind=energy_kind,
    )


def fit_statistics(
    train: AtomicGraphDataset,
    elements: list[int] | None,
    data: DataSection | None = None,
    loss: LossSection | None = None,
    isolated_e0s: dict[int, float] | None = None,
) -> dict:
    """Elements, E0s (``data.e0s``), interaction-energy shift, force-RMS scale, neighbours per atom and whether
    the data carries charge or spin (``charge_spin``).

    Uses at most 5,000 structures spread evenly over the training set (every one for small sets), one graph at a
    time (a sample of large OC20 graphs would otherwise hold hundreds of MB at once).

    Raises:
        DataError: none of those structures has an energy, forces or stress label (nothing to train on), or
            one lacks a label that ``loss`` weighs (naming the record and the key it was looked up under: every
            sampled structure must carry it; stress only periodic ones).
    """
    from mlip_datasets.record import is_periodic

    data = data or DataSection()
    keys = data.label_keys()
    needed = [label for label in ("energy", "forces", "stress") if loss is not None and getattr(loss, label) > 0]
    count = len(train)
    picks = np.unique(np.linspace(0, count - 1, min(count, _STATS_MAX_STRUCTURES)).round().astype(np.int64))
    lacking: dict[str, int] = {}  # the first sampled record without each needed label
    labelled_any = charge_spin = False
    compositions: list[dict[int, int]] = []
    energies: list[float] = []
    present: set[int] = set()
    force_sq, force_n, atoms, edges = 0.0, 0, 0, 0
    for i in picks:
        g = train[int(i)]
        labelled_any |= g.energy is not None or g.forces is not None or g.stress is not None
        charge_spin |= g.charge is not None or g.spin is not None
        for label in needed:
            missing = label not in lacking and not g.has(label)
            if missing and (label != "stress" or is_periodic(g.cell.numpy(), g.pbc.numpy())):
                lacking[label] = g.index
        z, n = np.unique(g.numbers.numpy(), return_counts=True)
        present.update(z.tolist())
        if g.energy is not None:
            compositions.append(dict(zip(z.tolist(), n.tolist())))
            energies.append(float(g.energy))
        if g.forces is not None:
            force_sq += float(g.forces.double().pow(2).sum())
            force_n += g.forces.numel()
        atoms, edges = atoms + g.natoms, edges + g.num_edges
    if not labelled_any:
        checked = "any" if len(picks) == count else f"the {len(picks)} sampled"
        raise DataError(
            train.source,
            f"no energy, forces or stress labels (keys {keys.energy!r}, {keys.forces!r}, {keys.stress!r}) on "
            f"{checked} of the {count} training structures: nothing to train on; name the keys with --energy-key, "
            "--forces-key, --stress-key or data.keys",
        )
    for label in needed:  # so a wrong key name is one line before training, not a term that trains on nothing
        if label in lacking:
            weight, key = getattr(loss, label), getattr(keys, label)
            raise DataError(
                train.source,
                f"no {label} label under the key {key!r}, which loss.{label} = {weight:g} needs; name the key "
                f"(--{label}-key or data.keys.{label}) or set loss.{label}: 0",
                record=lacking[label],
            )
    if elements:
        missing = sorted(present - set(elements))
        if missing:
            raise RecipeError(
                f"recipe: the training data has elements {missing} that model.elements {sorted(elements)} does not list"
            )
    elements = list(elements) if elements else sorted(present)
    comp = np.array([[c.get(z, 0) for z in elements] for c in compositions], dtype=np.float64).reshape(
        -1, len(elements)
    )
    energy = np.array(energies)
    e0s, e0s_source = resolve_e0s(data.e0s, comp, energy, elements, isolated_e0s or {})
    stats: dict = {"elements": elements, "structures": len(picks), "shift": 0.0, "scale": 1.0}
    stats["e0s"], stats["e0s_source"] = e0s, e0s_source
    if len(energy):
        residual = (energy - comp @ np.array([e0s.get(z, 0.0) for z in elements])) / comp.sum(axis=1)
        stats["shift"] = float(residual.mean())
    if force_n:
        rms = float(np.sqrt(force_sq / force_n))
        stats["scale"] = rms if rms > 1e-8 else 1.0
    stats["avg_num_neighbors"] = max(edges / max(atoms, 1), 1.0)
    stats["charge_spin"] = charge_spin
    return stats


def default_num_workers(world: int = 1) -> int:
    """Worker processes per training process: half of the cores this process may use (its share when
    ``LOCAL_WORLD_SIZE`` processes run on the node), at most 4; 0 on a single core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return max(0, min(_MAX_AUTO_WORKERS, cores // max(local, 1) // 2))


def plan_loading(data: TrainingData, section: DataSection, stats: dict, world: int = 1) -> tuple[int, bool]:
    """Decide ``(num_workers, cache)`` for the training set, and cache the validation set where it fits.

    The in-memory graph cache lives in the process that builds the graphs, so the training set is cached only
    with 0 workers: ``cache_graphs: yes`` implies 0 workers; ``auto`` caches (and, with ``num_workers: auto``,
    uses 0 workers) when the training and validation graphs fit in about 1 GiB (estimated from the atom counts
    and the neighbours per atom of ``stats``), and otherwise leaves the graphs to ``default_num_workers``
    workers, rebuilt every epoch. The validation set is always evaluated in this process: it is cached under
    the same rule whatever the workers. ``no`` never caches.
    """
    per_atom = float(stats.get("avg_num_neighbors", 1.0))

    def size(part: AtomicGraphDataset | None) -> int:
        return 0 if part is None else graph_bytes_estimate(part.natoms_array(), per_atom, part.dtype)

    choice = section.cache_graphs
    forced, never = choice in ("yes", True), choice in ("no", False)
    fits = size(data.train) + size(data.valid) <= _CACHE_BUDGET_BYTES
    if section.num_workers == "auto":
        workers = 0 if forced or (fits and not never) else default_num_workers(world)
    else:
        workers = int(section.num_workers)
    cache = workers == 0 and (forced or (fits and not never))
    data.train.set_cache(cache)
    if data.valid is not None:
        data.valid.set_cache(forced or (not never and size(data.valid) <= _CACHE_BUDGET_BYTES))
    return workers, cache


class TrainBatches:
    """This process's training batches, epoch by epoch, built by ``num_workers`` worker processes.

    Packing (:class:`SizeBatchSampler`: at most ``max_structures``, and ``section.max_atoms`` /
    ``section.max_edges`` per batch of this process) depends only on (seed, epoch), so every process, every
    resumed run and every number of workers sees the same batches. ``max_edges`` packs on an estimate:
    atoms x the mean neighbours per atom of ``stats`` (exact counts would need every graph built first).
    """

    def __init__(
        self,
        train: AtomicGraphDataset,
        section: DataSection,
        stats: dict,
        max_structures: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
    ):
        natoms = train.natoms_array()
        num_edges = None
        if section.max_edges:
            num_edges = np.rint(natoms * float(stats.get("avg_num_neighbors", 1.0))).astype(np.int64)
        self.sampler = SizeBatchSampler(
            natoms,
            max_atoms=section.max_atoms,
            max_edges=section.max_edges,
            max_structures=max_structures,
            num_edges=num_edges,
            shuffle=True,
            seed=seed,
            num_replicas=world,
            rank=rank,
        )
        self.num_workers = num_workers
        self.loader = GraphLoader(train, self.sampler, num_workers=num_workers)
        # exact for packing by structure count; by atoms or edges the count varies a little between epochs
        self.batches_per_epoch = len(self.sampler.batches())

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[int, Batch, float]]:
        """Batches of ``epoch`` from position ``skip`` on (resuming mid-epoch): ``(position in epoch, batch,
        seconds this process waited for it)``. Workers stop when the loop ends or is left."""
        self.sampler.set_epoch(epoch, start=skip)
        batches = iter(self.loader)
        try:
            start = time.perf_counter()
            for k, batch in enumerate(batches, start=skip):
                yield k, batch, time.perf_counter() - start
                start = time.perf_counter()
        finally:
            batches.close()
