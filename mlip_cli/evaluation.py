"""Evaluate a trained model on a data set: errors, per-element force errors, parity data, equivariance error,
and for an ensemble the calibration of its uncertainty (:mod:`mlip_cli.uncertainty`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from .models import is_ensemble
from .models.symmetry import ROTATION, SYMMETRY_TYPES, draw, transform_batch
from .train.metrics import evaluate_set
from .uncertainty import CalibrationAccumulator, CalibrationReport

__all__ = ["EvalReport", "evaluate_model", "equivariance_error"]


@dataclasses.dataclass
class EvalReport:
    """What ``mlip eval`` prints (all errors in meV units; see :mod:`mlip_cli.train.metrics`); ``calibration``:
    an ensemble's (errors are those of the members' mean), None for a plain model."""

    structures: int
    atoms: int
    metrics: dict[str, float]
    per_element: dict[int, dict[str, float]]
    equivariance: dict[str, float]
    parity: dict[str, np.ndarray] = dataclasses.field(repr=False, default_factory=dict)
    calibration: CalibrationReport | None = None

    def as_dict(self) -> dict:
        result = {
            "structures": self.structures,
            "atoms": self.atoms,
            "metrics": self.metrics,
            "per_element": {str(z): v for z, v in self.per_element.items()},
            "equivariance": self.equivariance,
        }
        if self.calibration is not None:
            result["calibration"] = self.calibration.as_dict()
        return result


def equivariance_error(model, graphs, device, rotations: int = 3, max_structures: int = 32, seed: int = 0) -> dict:
    """How far the model is from exact O(3) symmetry on real inputs, per generator of the group
    (:mod:`mlip_cli.models.symmetry`).

    For ``rotations`` Haar-random proper rotations (type ``rotation``) and the inversion ``r -> -r`` (type
    ``inversion``) of up to ``max_structures`` structures:
    ``energy_mev_per_atom``: max ``|E(gx) - E(x)| / N``; ``force_rel``: ``|F(gx) - g F(x)| / |F(x)|`` over all
    atoms (root of summed squares); ``force_angle_deg``: mean angle between ``F(gx)`` and ``g F(x)`` per atom.
    """
    if len(graphs) == 0:
        return {}
    generator = torch.Generator().manual_seed(seed)
    picks = list(range(min(len(graphs), max_structures)))
    batch = graphs.batch(picks).to(device)
    base = model(batch, compute_forces=True)
    report: dict = {"rotations": rotations, "structures": len(picks)}
    for kind in SYMMETRY_TYPES:
        transforms = [draw(kind, batch.num_graphs, generator) for _ in range(rotations if kind == ROTATION else 1)]
        e_err, f_num, f_den, angles = 0.0, 0.0, 0.0, []
        for R in transforms:
            g = R.to(device)
            out = model(transform_batch(batch, g), compute_forces=True)
            natoms = batch.natoms.to(out["energy"].dtype)
            e_err = max(e_err, float(((out["energy"] - base["energy"]).abs() / natoms).max()))
            expected = torch.einsum("nij,nj->ni", g.to(out["forces"].dtype)[batch.batch], base["forces"])
            f_num += float((out["forces"] - expected).pow(2).sum())
            f_den += float(expected.pow(2).sum())
            # atan2(|a x b|, a.b) stays accurate near 0, where acos of a float32 cosine bottoms out near 0.02 deg
            a, b = out["forces"], expected
            angle = torch.atan2(torch.linalg.cross(a, b).norm(dim=1), (a * b).sum(dim=1))
            strong = expected.norm(dim=1) > 1e-6
            angles.append(torch.rad2deg(angle[strong]).double())
        count = sum(a.numel() for a in angles)
        report[kind] = {
            "energy_mev_per_atom": 1000.0 * e_err,
            "force_rel": math.sqrt(f_num / f_den) if f_den > 0 else 0.0,
            "force_angle_deg": float(torch.cat(angles).mean()) if count else 0.0,
        }
    return report


def evaluate_model(
    model, graphs, batch_size: int = 16, device="cpu", compute_stress: bool = True, rotations: int = 3, progress=None
) -> EvalReport:
    """Errors of ``model`` on every structure of ``graphs`` (an
    :class:`~mlip_datasets.torch_data.AtomicGraphDataset`); for an ensemble also its calibration."""
    calibration = CalibrationAccumulator(model.num_members) if is_ensemble(model) else None
    metrics = evaluate_set(
        model,
        graphs,
        batch_size,
        torch.device(device),
        compute_stress=compute_stress,
        keep=True,
        progress=progress,
        on_batch=calibration.update if calibration is not None else None,
    )
    equivariance = equivariance_error(model, graphs, device, rotations=rotations) if rotations > 0 else {}
    return EvalReport(
        structures=len(graphs),
        atoms=int(graphs.natoms_array().sum()),
        metrics=metrics.summary(),
        per_element=metrics.per_element(),
        equivariance=equivariance,
        parity=metrics.parity_data(),
        calibration=calibration.report() if calibration is not None else None,
    )


def check_energy_kind(trained: str | None, graphs, source, allow: bool = False) -> None:
    """Refuse to score energies of another kind than the model was trained on (adsorption energies against a
    model of total energies differ by the references, not by the model's error), unless ``allow``.

    Raises:
        UsageError: both kinds are known and differ.
    """
    from mlip_datasets.label_kind import label_kind

    from .errors import UsageError

    data_kind, _ = label_kind(graphs.reader)
    if allow or trained is None or data_kind is None or trained == data_kind:
        return
    raise UsageError(
        f"{source}: holds {data_kind} energies, but the model was trained on {trained} energies; "
        "pass --any-energy-kind to score them anyway"
    )


def open_graphs(path: str | Path, cutoff: float, dtype: torch.dtype, limit: int | None = None, keys=None):
    """Every structure of a data file (labels under ``keys``, a LabelKeys) as a graph set (no caching: evaluated
    once)."""
    from mlip_datasets.io import open_dataset
    from mlip_datasets.keys import DEFAULT_KEYS
    from mlip_datasets.torch_data import AtomicGraphDataset

    reader = open_dataset(path, keys=keys or DEFAULT_KEYS)
    n = len(reader) if limit is None else min(limit, len(reader))
    return AtomicGraphDataset(reader, cutoff, dtype, indices=np.arange(n))
