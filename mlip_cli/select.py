"""Active learning: the structures of an unlabelled pool to label next, by an ensemble's uncertainty (``mlip select``).

    from mlip_cli.checkpoint import load_model
    from mlip_cli.select import select_file
    report = select_file(load_model("run/best.pt"), "pool.extxyz", "picked.extxyz", n=50)

Uncertainty: every pool structure is run through the ensemble (the batching, element checks and skips of
:func:`mlip_cli.predict.predict_labels`) and scored by the spread of its members, ``by``:

- ``mean`` (default): the mean over atoms of the per-atom force uncertainty ``sqrt(mean_k |F_k - F_mean|^2)``
  (eV/A). It follows the structure's force error (what ``mlip eval`` checks the calibration against) and does not
  grow with the number of atoms.
- ``max``: its maximum over atoms (eV/A): finds a structure with one badly described atom in a large cell.
- ``energy``: the members' energy standard deviation per atom (eV/atom).

Diversity: structures are taken greedily from the most uncertain down, skipping any whose fingerprint lies closer
than ``min_distance`` to one already picked, so N near-duplicates (consecutive MD frames, a repeated relaxation)
are not all picked. The fingerprint (:func:`fingerprint`) is invariant to rotation, translation, atom order and
supercells: the composition (fraction of atoms of each element) and, for each element pair, the smoothed
histogram of neighbour distances within the model's cutoff, per atom. The default ``min_distance`` is a tenth of
the median distance between two pool fingerprints (:func:`default_min_distance`), so it scales with how varied the
pool is; ``min_distance=0`` turns the rule off (pure uncertainty ranking). When fewer than N structures are far
enough apart, fewer are picked (the report says so). Equal uncertainties are ordered by a random permutation
from ``seed``: the picks depend on the seed only through ties.

Memory: per pool structure its per-atom force uncertainties and its fingerprint (a few hundred numbers); the
picked structures are read again from the pool to be written, with every label and ``info`` entry they had.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mlip_datasets.formats import get_format
from mlip_datasets.formats.ase_files import write_extxyz
from mlip_datasets.formats.base import Reader
from mlip_datasets.io import commit_staged, open_dataset, stage_dataset
from mlip_datasets.neighbors import edge_vectors, neighbor_list
from mlip_datasets.record import MAX_Z, Structure

from .errors import UsageError, require_new_output
from .models import is_ensemble
from .predict import DEFAULT_BATCH_ATOMS, Skipped, predict_labels, skipped_summary, uncertainty_names

__all__ = [
    "BY",
    "Pick",
    "PoolScores",
    "SelectReport",
    "default_min_distance",
    "fingerprint",
    "fingerprint_matrix",
    "pick_diverse",
    "require_ensemble",
    "score_pool",
    "select_file",
]

#: How a structure's uncertainty is summarised (module docstring).
BY = ("mean", "max", "energy")

#: Gaussians per element pair in the distance histogram, evenly spaced from 0 to the cutoff.
FINGERPRINT_BINS = 16

#: The default ``min_distance``: this fraction of the median distance between two pool fingerprints.
MIN_DISTANCE_FRACTION = 0.1

#: The median for the default ``min_distance`` is taken over all pairs of at most this many structures (evenly
#: spaced through the pool when it is larger): exact for small pools, bounded time for large ones.
MEDIAN_SAMPLE = 2000


@dataclasses.dataclass(frozen=True)
class Pick:
    """One picked structure: ``rank`` (1 = picked first, the most uncertain), its ``index`` in the pool, its
    ``uncertainty`` (as ``by`` says) and the members' energy standard deviation (eV)."""

    rank: int
    index: int
    uncertainty: float
    energy_std: float


@dataclasses.dataclass
class SelectReport:
    """What ``mlip select`` did."""

    picked: list[Pick]
    requested: int
    pool_size: int
    scored: int
    skipped: list[Skipped]
    by: str
    min_distance: float
    seconds: float
    output: Path

    def as_dict(self) -> dict:
        return {
            "picked": len(self.picked),
            "requested": self.requested,
            "pool_size": self.pool_size,
            "scored": self.scored,
            "skipped": len(self.skipped),
            "by": self.by,
            "min_distance": self.min_distance,
            "seconds": self.seconds,
            "output": str(self.output),
            "picks": [dataclasses.asdict(p) for p in self.picked],
            "skipped_structures": [s.as_dict() for s in self.skipped],
        }


@dataclasses.dataclass
class PoolScores:
    """The ensemble's spread and the fingerprint of every pool structure it could run (input order)."""

    index: np.ndarray  # (M,) int64: position in the pool
    natoms: np.ndarray  # (M,) int64
    energy_std: np.ndarray  # (M,) eV
    forces_uncertainty: list[np.ndarray]  # M arrays (natoms,), eV/A
    fingerprints: list[dict[tuple[int, ...], np.ndarray]]

    def uncertainty(self, by: str) -> np.ndarray:
        """One number per structure: ``mean``/``max`` force uncertainty or ``energy`` std per atom (module doc)."""
        if by == "energy":
            return self.energy_std / self.natoms
        reduce = np.mean if by == "mean" else np.max
        return np.array([float(reduce(u)) for u in self.forces_uncertainty])


def require_ensemble(model: torch.nn.Module) -> None:
    """A UsageError unless ``model`` is an ensemble: selection ranks by the spread of its members."""
    if not is_ensemble(model):
        raise UsageError(
            "the model is not an ensemble: selection needs the spread of its members (train one with "
            "model.ensemble: K >= 2 in the recipe)"
        )


def fingerprint(s: Structure, cutoff: float, bins: int = FINGERPRINT_BINS) -> dict[tuple[int, ...], np.ndarray]:
    """A structure's invariant fingerprint, as ``{key: values}``: ``(z,)`` -> the fraction of its atoms that are
    element ``z``; ``(za, zb)`` (``za <= zb``) -> for each of ``bins`` Gaussians evenly spaced from 0 to ``cutoff``,
    the number of ``za``-``zb`` neighbour pairs at that distance per atom, each pair weighted by a cosine that falls
    to 0 at the cutoff (so the fingerprint changes continuously as atoms move across it)."""
    natoms = max(s.natoms, 1)
    elements, counts = np.unique(s.numbers, return_counts=True)
    result = {(int(z),): np.array([c / natoms]) for z, c in zip(elements, counts)}
    src, dst, shifts = neighbor_list(s.positions, s.cell, s.pbc, cutoff)
    if len(src) == 0:
        return result
    r = np.linalg.norm(edge_vectors(s.positions, s.cell, src, dst, shifts), axis=1)
    centres = np.linspace(0.0, cutoff, bins)
    width = cutoff / (bins - 1)
    envelope = 0.5 * (np.cos(np.pi * np.minimum(r, cutoff) / cutoff) + 1.0)
    smeared = np.exp(-0.5 * ((r[:, None] - centres) / width) ** 2) * envelope[:, None] / natoms
    za, zb = s.numbers[src], s.numbers[dst]
    pair = np.minimum(za, zb) * (MAX_Z + 1) + np.maximum(za, zb)
    keys, which = np.unique(pair, return_inverse=True)
    sums = np.zeros((len(keys), bins))
    np.add.at(sums, which.reshape(-1), smeared)
    for key, row in zip(keys, sums):
        result[(int(key) // (MAX_Z + 1), int(key) % (MAX_Z + 1))] = row
    return result


def fingerprint_matrix(fingerprints: Sequence[dict[tuple[int, ...], np.ndarray]]) -> np.ndarray:
    """The fingerprints as rows of one matrix over every key any of them has (absent keys count as zeros)."""
    widths: dict[tuple[int, ...], int] = {}
    for f in fingerprints:
        for key, values in f.items():
            widths.setdefault(key, len(values))
    start, offset = {}, 0
    for key in sorted(widths):
        start[key], offset = offset, offset + widths[key]
    matrix = np.zeros((len(fingerprints), offset))
    for row, f in zip(matrix, fingerprints):
        for key, values in f.items():
            row[start[key] : start[key] + len(values)] = values
    return matrix


def default_min_distance(matrix: np.ndarray, fraction: float = MIN_DISTANCE_FRACTION) -> float:
    """``fraction`` of the median distance between two different fingerprints (rows of ``matrix``), over all
    pairs of the pool or of :data:`MEDIAN_SAMPLE` structures evenly spaced through it; identical pairs are left
    out (they say nothing about the pool's spread). ``inf`` when all fingerprints are identical (one pick)."""
    if len(matrix) > MEDIAN_SAMPLE:
        matrix = matrix[np.unique(np.linspace(0, len(matrix) - 1, MEDIAN_SAMPLE).round().astype(np.int64))]
    if len(matrix) < 2:
        return float("inf")
    distances = torch.nn.functional.pdist(torch.from_numpy(matrix)).numpy()
    distances = distances[distances > 0]
    return fraction * float(np.median(distances)) if distances.size else float("inf")


def pick_diverse(
    uncertainty: np.ndarray, fingerprints: np.ndarray, n: int, min_distance: float, seed: int = 0
) -> list[int]:
    """Up to ``n`` row positions, most uncertain first, none closer than ``min_distance`` (Euclidean, fingerprint
    rows) to one picked before it; equal uncertainties in the order of a random permutation from ``seed``
    (NaN uncertainties last)."""
    tie_break = np.random.default_rng(seed).permutation(len(uncertainty))
    order = np.lexsort((tie_break, -np.asarray(uncertainty, dtype=np.float64)))
    kept = np.empty((min(n, len(order)), fingerprints.shape[1]))
    picked: list[int] = []
    for i in order:
        if len(picked) == n:
            break
        if picked and min_distance > 0:
            nearest = np.sqrt(np.square(kept[: len(picked)] - fingerprints[i]).sum(1)).min()
            if nearest < min_distance:
                continue
        kept[len(picked)] = fingerprints[i]
        picked.append(int(i))
    return picked


def score_pool(
    model: torch.nn.Module,
    pool: Reader | Sequence[Structure],
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    source: str | Path | None = None,
    skipped: list[Skipped] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PoolScores:
    """Run the ensemble ``model`` on every structure of ``pool`` (as ``mlip predict`` does) and keep its spread and
    the structure's :func:`fingerprint`; structures it cannot run are appended to ``skipped``."""
    skipped = [] if skipped is None else skipped
    names = uncertainty_names()
    first_skip = len(skipped)
    natoms, energy_std, forces_uncertainty, fingerprints = [], [], [], []
    for s in predict_labels(model, pool, batch_atoms, source, skipped, progress):
        natoms.append(s.natoms)
        energy_std.append(float(s.info[names["energy_std"]]))
        forces_uncertainty.append(np.asarray(s.info[names["forces_uncertainty"]], dtype=np.float64))
        fingerprints.append(fingerprint(s, model.cutoff))
    # predict_labels yields the structures it runs in pool order: the others are the skipped ones
    left_out = {k.index for k in skipped[first_skip:]}
    index = np.array([i for i in range(len(pool)) if i not in left_out], dtype=np.int64)
    return PoolScores(
        index, np.array(natoms, dtype=np.int64), np.array(energy_std), forces_uncertainty, fingerprints
    )  # fmt: skip


#: Per-atom values that go into extxyz columns (``atoms.arrays``), not the comment line.
_PER_ATOM = ("forces_uncertainty",)


def select_file(
    model: torch.nn.Module,
    pool: Reader | str | Path,
    out: str | Path,
    n: int,
    *,
    pool_format: str | None = None,
    by: str = "mean",
    min_distance: float | None = None,
    seed: int = 0,
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SelectReport:
    """Pick up to ``n`` structures of ``pool`` (a path, read with ``pool_format`` or detected, or an open reader) to
    label next, by the uncertainty of the ensemble ``model`` with the diversity rule (module docstring), and write
    them to ``out`` (extxyz) in pick order.

    Each written structure keeps everything the pool had (positions, cell, pbc, labels, ``info``) and gains
    ``info`` entries ``uncertainty`` (its score), ``uncertainty_by`` (``by``), ``energy_std`` (eV),
    ``pool_index``, ``pool_file`` and ``select_rank`` (1 = most uncertain), and the per-atom column
    ``forces_uncertainty`` (eV/A). ``min_distance``: None for :func:`default_min_distance`, 0 for no diversity rule.

    Raises:
        UsageError: ``model`` is not an ensemble, a bad option, an empty pool or one the model can run none of,
            ``out`` exists (without ``overwrite``) or is not ``.extxyz``/``.xyz``.
        DataError: an unreadable pool, an unwritable output.
    """
    require_ensemble(model)
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    if by not in BY:
        raise UsageError(f"--by must be one of {', '.join(BY)}, got {by!r}")
    if min_distance is not None and not min_distance >= 0:
        raise UsageError(f"--min-distance must be >= 0, got {min_distance}")
    out = Path(out)
    if out.suffix.lower() not in (".extxyz", ".xyz"):
        raise UsageError(f"{out}: the picks are written as extxyz; name the output .extxyz or .xyz")
    require_new_output(out, overwrite)
    start = time.perf_counter()
    skipped: list[Skipped] = []
    opened = contextlib.nullcontext(pool) if isinstance(pool, Reader) else open_dataset(pool, pool_format)
    with opened as reader:
        if len(reader) == 0:
            raise UsageError(f"{reader.path}: holds no structures")
        scores = score_pool(model, reader, batch_atoms, reader.path, skipped, progress)
        if len(scores.index) == 0:
            raise UsageError(f"{reader.path}: no structure scored; {skipped_summary(skipped, model.config.elements)}")
        uncertainty = scores.uncertainty(by)
        matrix = fingerprint_matrix(scores.fingerprints)
        threshold = default_min_distance(matrix) if min_distance is None else float(min_distance)
        order = pick_diverse(uncertainty, matrix, n, threshold, seed)
        picks = [
            Pick(rank, int(scores.index[p]), float(uncertainty[p]), float(scores.energy_std[p]))
            for rank, p in enumerate(order, 1)
        ]

        def annotated():
            for pick, p in zip(picks, order):
                s = reader[pick.index]
                info = {
                    **s.info,
                    "uncertainty": pick.uncertainty,
                    "uncertainty_by": by,
                    "energy_std": pick.energy_std,
                    "pool_index": pick.index,
                    "pool_file": str(reader.path),
                    "select_rank": pick.rank,
                    "forces_uncertainty": scores.forces_uncertainty[p],
                }
                yield s.replace(info=info)

        target = dataclasses.replace(get_format("extxyz"), write=partial(write_extxyz, per_atom=_PER_ATOM))
        tmp, _ = stage_dataset(out, annotated(), target)
        pool_size = len(reader)
    commit_staged([(tmp, out)])
    return SelectReport(
        picks, n, pool_size, len(scores.index), skipped, by, threshold, time.perf_counter() - start, out
    )  # fmt: skip
