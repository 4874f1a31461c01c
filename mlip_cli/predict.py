"""Single-point labels from a trained model for every structure of a data set (``mlip predict``).

    from mlip_cli.checkpoint import load_model
    from mlip_cli.predict import predict_file
    report = predict_file(load_model("run/best.pt"), "structures.extxyz", "predicted.extxyz")

Every structure gets the model's energy (eV) and forces (eV/A), and, where it is periodic with a cell of nonzero
volume, the stress (eV/A^3, ASE's sign); these replace any labels it had, everything else (charge, spin, tags,
fixed atoms, ids, info) is kept. An ensemble model (``model.ensemble: K``) predicts the members' mean and adds
its spread to each structure's ``info`` (:func:`uncertainty_names`): ``energy_std`` (eV), ``forces_std``
``(N, 3)`` and ``forces_uncertainty`` ``(N,)`` (eV/A), ``stress_std`` (Voigt 6-vector, periodic only), under
names built from the label keys (``--energy-key MACE_energy`` gives ``MACE_energy_std``). Every output format
that keeps ``info`` keeps them; extxyz writes the per-atom ones as per-atom columns (``atoms.arrays`` when
``ase.io.read`` reads them back) and the others in the comment line (``atoms.info``).

Structures are packed into model calls of at most ``batch_atoms`` atoms in file order
(:class:`~mlip_datasets.torch_data.SizeBatchSampler`, the packing training uses) and streamed to the output,
so memory holds one batch (plus whatever the input reader keeps: ``ase.io`` files are parsed whole).

Structures the model cannot run are skipped and reported (:class:`Skipped`), not fatal: elements the model was
not built for, and non-finite positions. A periodic structure with a degenerate cell is a user error, as in
``mlip relax``/``mlip md`` (:func:`mlip_cli.structures.check_cells`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mlip_datasets.formats.ase_files import write_extxyz
from mlip_datasets.formats.base import Reader
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.io import check_output, commit_staged, discard_staged, open_dataset, output_format, stage_dataset
from mlip_datasets.keys import DEFAULT_KEYS, LabelKeys
from mlip_datasets.record import Structure, is_periodic, stress_to_voigt
from mlip_datasets.torch_data import SizeBatchSampler, natoms_of

from .errors import UsageError
from .structures import check_cells

__all__ = [
    "DEFAULT_BATCH_ATOMS",
    "PredictReport",
    "Skipped",
    "predict_file",
    "predict_labels",
    "skipped_summary",
    "uncertainty_names",
]

#: Atoms per model call (as ``mlip relax --batch-atoms``): large enough to amortise the per-call overhead.
DEFAULT_BATCH_ATOMS = 4096


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A structure left out: its index in the input and why (unknown elements, or non-finite positions)."""

    index: int
    unknown_elements: tuple[int, ...] = ()
    reason: str = ""

    def describe(self) -> str:
        if self.unknown_elements:
            from ase.data import chemical_symbols

            return f"#{self.index} ({', '.join(chemical_symbols[z] for z in self.unknown_elements)})"
        return f"#{self.index} ({self.reason})"

    def as_dict(self) -> dict:
        return {"index": self.index, "unknown_elements": list(self.unknown_elements), "reason": self.reason}


@dataclasses.dataclass
class PredictReport:
    """What ``mlip predict`` did: structures written, those skipped, wall time, the output path."""

    count: int
    skipped: list[Skipped]
    seconds: float
    output: Path

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "skipped": len(self.skipped),
            "seconds": self.seconds,
            "output": str(self.output),
            "skipped_structures": [s.as_dict() for s in self.skipped],
        }


def _why_skipped(structure: Structure, index: int, known: set[int]) -> Skipped | None:
    unknown = tuple(sorted({int(z) for z in np.unique(structure.numbers)} - known))
    if unknown:
        return Skipped(index, unknown, "elements the model does not know")
    if not np.isfinite(structure.positions).all():
        return Skipped(index, reason="non-finite positions")
    return None


def uncertainty_names(keys: LabelKeys = DEFAULT_KEYS) -> dict[str, str]:
    """Where an ensemble's spread goes in ``info``: ``{output key: info name}``, the names built from ``keys``
    (``energy_std``, ``forces_std``, ``forces_uncertainty``, ``stress_std`` for the default keys)."""
    return {
        "energy_std": f"{keys.energy}_std",
        "forces_std": f"{keys.forces}_std",
        "forces_uncertainty": f"{keys.forces}_uncertainty",
        "stress_std": f"{keys.stress}_std",
    }


def predict_labels(
    model: torch.nn.Module,
    structures: Reader | Sequence[Structure],
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    source: str | Path | None = None,
    skipped: list[Skipped] | None = None,
    progress: Callable[[int], None] | None = None,
    keys: LabelKeys = DEFAULT_KEYS,
) -> Iterator[Structure]:
    """Each structure with the model's energy, forces and (periodic only) stress as its labels, in input order;
    with an ensemble model, also its uncertainties in ``info`` under :func:`uncertainty_names` of ``keys``.

    Args:
        model: a :class:`mlip_cli.models.Potential` (e.g. from :func:`mlip_cli.checkpoint.load_model`); runs on
            its own device and dtype.
        structures: a reader (``open_dataset``) or a sequence of :class:`Structure`.
        batch_atoms: at most this many atoms per model call (a larger structure gets a call to itself).
        source: the input's name in error messages (default: the reader's path).
        skipped: structures the model cannot run are appended here (and not yielded).
        progress: ``progress(done)`` after each batch, ``done`` counting input structures (skipped ones too).
    """
    if batch_atoms < 1:
        raise UsageError(f"batch_atoms must be >= 1, got {batch_atoms}")
    source = source if source is not None else getattr(structures, "path", "structures")
    known = {int(z) for z in model.config.elements}
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    natoms = natoms_of(structures) if isinstance(structures, Reader) else [s.natoms for s in structures]
    packing = SizeBatchSampler(natoms, max_atoms=batch_atoms, shuffle=False)
    was_training = model.training
    model.eval()
    try:
        names = uncertainty_names(keys)
        yield from _predict_batches(model, structures, packing, source, known, device, skipped, progress, names)
    finally:
        model.train(was_training)


def _predict_batches(
    model, structures, packing, source, known, device, skipped, progress, names
) -> Iterator[Structure]:
    done = 0
    for positions in packing:
        batch_structures = [structures[i] for i in positions]
        check_cells(batch_structures, source, first=positions[0])  # packing keeps file order: indices consecutive
        runnable = []
        for i, s in zip(positions, batch_structures):
            why = _why_skipped(s, i, known)
            if why is None:
                runnable.append(s)
            elif skipped is not None:
                skipped.append(why)
        if runnable:
            yield from _run(model, runnable, device, names)
        done += len(positions)
        if progress is not None:
            progress(done)


def _run(
    model: torch.nn.Module, structures: list[Structure], device: torch.device, names: dict[str, str]
) -> Iterator[Structure]:
    """One model call on ``structures``: forces always, stress only when some structure is periodic."""
    periodic = [is_periodic(s.cell, s.pbc) for s in structures]
    graphs = [structure_to_graph(s, model.cutoff, model.dtype) for s in structures]
    batch = collate_graphs(graphs).to(device)
    out = model(batch, compute_forces=True, compute_stress=any(periodic))

    def numpy(key: str) -> np.ndarray:
        return out[key].detach().to("cpu", torch.float64).numpy()

    energy, forces = numpy("energy"), numpy("forces")
    stress = numpy("stress") if any(periodic) else None
    spread = {key: numpy(key) for key in names if key in out}  # an ensemble's; empty for one model
    ptr = batch.ptr.tolist()
    for k, s in enumerate(structures):
        info = dict(s.info)
        if spread:
            atoms = slice(ptr[k], ptr[k + 1])
            info[names["energy_std"]] = float(spread["energy_std"][k])
            info[names["forces_std"]] = spread["forces_std"][atoms].copy()
            info[names["forces_uncertainty"]] = spread["forces_uncertainty"][atoms].copy()
            if periodic[k]:
                info[names["stress_std"]] = stress_to_voigt(spread["stress_std"][k])
        yield s.replace(
            energy=float(energy[k]),
            forces=forces[ptr[k] : ptr[k + 1]].copy(),
            stress=stress[k].copy() if periodic[k] else None,
            info=info,
        )


def label_format(out: str | Path, fmt: str | None, keys: LabelKeys):
    """The output format: ``fmt`` or the extension's; for extxyz, one that writes the labels under ``keys`` and
    an ensemble's per-atom spreads as per-atom columns. Other formats store labels under fixed names, so other
    keys there are a UsageError (they keep the spreads in each structure's info)."""
    target = output_format(out, fmt)
    if target.name == "extxyz":
        names = uncertainty_names(keys)
        per_atom = (names["forces_std"], names["forces_uncertainty"])
        return dataclasses.replace(target, write=partial(write_extxyz, keys=keys, per_atom=per_atom))
    if keys != DEFAULT_KEYS:
        raise UsageError(
            f"--energy-key/--forces-key/--stress-key apply to extxyz output; {target.name} stores labels "
            "under fixed names"
        )
    return target


def predict_file(
    model: torch.nn.Module,
    data: Reader | str | Path,
    out: str | Path,
    *,
    data_format: str | None = None,
    out_format: str | None = None,
    keys: LabelKeys = DEFAULT_KEYS,
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PredictReport:
    """Predict labels for every structure of ``data`` (a path, read with ``data_format`` or detected, or an open
    reader) and write them to ``out`` (any writable format, ``out_format`` or from the extension).

    ``out`` appears only complete (staged in a temporary sibling, renamed at the end); an existing ``out`` is
    refused unless ``overwrite``. ``keys``: label names for extxyz output (:func:`label_format`).

    Raises:
        UsageError: ``data`` holds no structures, or the model can run none of them (nothing is written).
        DataError: unreadable input, unwritable or existing output.
    """
    out = Path(out)
    target = label_format(out, out_format, keys)
    check_output(out, target, overwrite)
    start = time.perf_counter()
    skipped: list[Skipped] = []
    opened = contextlib.nullcontext(data) if isinstance(data, Reader) else open_dataset(data, data_format)
    with opened as reader:
        if len(reader) == 0:
            raise UsageError(f"{reader.path}: holds no structures")
        labelled = predict_labels(model, reader, batch_atoms, reader.path, skipped, progress, keys)
        tmp, count = stage_dataset(out, labelled, target)
    if count == 0:
        discard_staged([tmp])
        raise UsageError(f"{reader.path}: no structure predicted; {skipped_summary(skipped, model.config.elements)}")
    commit_staged([(tmp, out)])
    return PredictReport(count, skipped, time.perf_counter() - start, out)


def skipped_summary(skipped: Sequence[Skipped], elements: Sequence[int], shown: int = 5) -> str:
    """One line naming the first ``shown`` skipped structures and why, e.g.
    ``skipped 2 structures: #3 (Xe), #7 (Kr, Xe) have elements the model does not know (model: H C O)``."""
    from ase.data import chemical_symbols

    parts = []
    unknown = [s for s in skipped if s.unknown_elements]
    other = [s for s in skipped if not s.unknown_elements]
    if unknown:
        listed = ", ".join(s.describe() for s in unknown[:shown]) + (", ..." if len(unknown) > shown else "")
        model = " ".join(chemical_symbols[z] for z in sorted(int(z) for z in elements))
        parts.append(f"{listed} with elements the model does not know (model elements: {model})")
    if other:
        parts.append(", ".join(s.describe() for s in other[:shown]) + (", ..." if len(other) > shown else ""))
    noun = "structure" if len(skipped) == 1 else "structures"
    return f"skipped {len(skipped)} {noun}: " + "; ".join(parts)
