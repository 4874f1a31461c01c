"""Uncertainty of an ensemble's predictions: per-structure uncertainty, calibration statistics, calibration plot.

An ensemble (:class:`mlip_cli.models.ensemble.EnsemblePotential`) predicts the members' mean and their spread
(``energy_std``, ``forces_std``, ``forces_uncertainty``). Whether that spread can be trusted is what
``mlip eval`` measures against labels (:class:`CalibrationAccumulator`, :func:`plot_calibration`):

- ``spearman``: rank correlation over structures between the predicted force uncertainty
  (:func:`structure_uncertainty`, the RMS of the structure's ``forces_std`` components) and the actual force
  RMSE of that structure; 1 means the ensemble orders structures exactly by their error.
- ``forces_nll`` / ``energy_nll``: mean Gaussian negative log-likelihood of the errors (force components in
  eV/A, energies per atom in eV/atom) under ``N(0, std^2)``; lower is better; it depends on the units.
  A std below :data:`STD_FLOOR` (0.1 meV(/A), below any label's precision; K identical members give 0) is
  raised to it, so the likelihood stays finite.
- ``miscalibration_area``: mean over confidence levels p of ``|observed fraction of force components inside
  the central p-interval of N(0, std^2) - p|`` (0: calibrated, 0.5: worst).
- the binned curve (``curve``): force components in equal-count bins of predicted std; per bin the root mean
  predicted variance (RMV) against the observed RMSE; calibrated points lie on y = x. ``ence`` is the mean of
  ``|RMV - RMSE| / RMV`` over bins (expected normalised calibration error).

Pure numpy (no scipy): Spearman's rho is Pearson's correlation of average ranks (ties share their mean rank).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

__all__ = [
    "STD_FLOOR",
    "CalibrationAccumulator",
    "CalibrationReport",
    "average_ranks",
    "calibration_curve",
    "gaussian_nll",
    "miscalibration_area",
    "plot_calibration",
    "spearman",
    "structure_uncertainty",
]

#: Smallest std the likelihood uses (eV/A for forces, eV/atom for energies): see the module docstring.
STD_FLOOR = 1e-4
#: Bins of the calibration curve (fewer when there are fewer force components).
CURVE_BINS = 10


def structure_uncertainty(out: dict, batch, reduce: str = "rms", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-structure force uncertainty ``[B]`` (eV/A) of an ensemble's output ``out`` on ``batch``.

    ``reduce="rms"``: the root mean square of the structure's ``forces_std`` components (atoms in ``mask``,
    default all), which is ``sqrt(mean_i forces_uncertainty_i^2 / 3)``, on the scale of a per-component force
    RMSE. ``reduce="max"``: the largest per-atom ``forces_uncertainty`` (what ``mlip md`` watches). A structure
    with no atom in ``mask`` gets 0.

    Raises:
        ValueError: ``out`` is not an ensemble's output (no ``forces_uncertainty``), or an unknown ``reduce``.
    """
    if "forces_uncertainty" not in out:
        raise ValueError("structure_uncertainty needs an ensemble's output (forces_uncertainty missing)")
    per_atom = out["forces_uncertainty"].detach()
    graph = batch.batch.to(per_atom.device)
    if mask is not None:
        keep = mask.to(per_atom.device)
        per_atom, graph = per_atom[keep], graph[keep]
    result = torch.zeros(batch.num_graphs, dtype=per_atom.dtype, device=per_atom.device)
    if reduce == "max":
        return result.scatter_reduce(0, graph, per_atom, reduce="amax", include_self=True)
    if reduce != "rms":
        raise ValueError(f"reduce must be 'rms' or 'max', got {reduce!r}")
    count = torch.zeros_like(result).index_add_(0, graph, torch.ones_like(per_atom))
    total = result.index_add(0, graph, per_atom.square() / 3.0)
    return (total / count.clamp(min=1)).sqrt()


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (1-D); tied values share the mean of their ranks (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x).reshape(-1)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # first index of each run of ties
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks start..end-1 (0-based) -> mean of start+1..end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long 1-D arrays; NaN when either is constant or n < 2."""
    x, y = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs arrays of one length, got {x.size} and {y.size}")
    if x.size < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denominator if denominator > 0 else math.nan


def gaussian_nll(error: np.ndarray, std: np.ndarray, floor: float = STD_FLOOR) -> float:
    """Mean of ``0.5 log(2 pi s^2) + error^2 / (2 s^2)`` with ``s = max(std, floor)``."""
    error, std = np.asarray(error, dtype=np.float64), np.asarray(std, dtype=np.float64)
    var = np.maximum(std, floor) ** 2
    return float(np.mean(0.5 * np.log(2.0 * math.pi * var) + error**2 / (2.0 * var)))


def miscalibration_area(error: np.ndarray, std: np.ndarray, floor: float = STD_FLOOR, levels: int = 100) -> float:
    """Mean over ``levels`` confidence levels p (midpoints of [0, 1]) of ``|observed - p|``, where observed is
    the fraction of errors inside the central p-interval ``|error| <= z_p * max(std, floor)`` of the Gaussian."""
    error, std = np.asarray(error, dtype=np.float64).reshape(-1), np.asarray(std, dtype=np.float64).reshape(-1)
    if error.size == 0:
        return math.nan
    z = np.sort(np.abs(error) / np.maximum(std, floor))
    p = (np.arange(levels) + 0.5) / levels
    normal = NormalDist()
    bounds = np.array([normal.inv_cdf(0.5 + q / 2.0) for q in p])
    observed = np.searchsorted(z, bounds, side="right") / z.size
    return float(np.mean(np.abs(observed - p)))


def calibration_curve(error: np.ndarray, std: np.ndarray, bins: int = CURVE_BINS) -> dict[str, np.ndarray]:
    """Errors in equal-count bins of predicted ``std`` (ascending): per bin ``rmv`` (root mean predicted
    variance), ``rmse`` (observed root mean square error) and ``count``."""
    error, std = np.asarray(error, dtype=np.float64).reshape(-1), np.asarray(std, dtype=np.float64).reshape(-1)
    order = np.argsort(std, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, error.size)) if g.size]
    return {
        "rmv": np.array([math.sqrt(float(np.mean(std[g] ** 2))) for g in groups]),
        "rmse": np.array([math.sqrt(float(np.mean(error[g] ** 2))) for g in groups]),
        "count": np.array([g.size for g in groups], dtype=np.int64),
    }


@dataclasses.dataclass
class CalibrationReport:
    """Calibration of an ensemble on labelled data (module docstring); arrays for the plot and for tests."""

    members: int
    structures: int
    spearman: float
    forces_nll: float
    energy_nll: float | None
    miscalibration_area: float
    ence: float
    curve: dict[str, np.ndarray]
    structure_uncertainty: np.ndarray = dataclasses.field(repr=False)  # [S] eV/A, structures with force labels
    structure_force_rmse: np.ndarray = dataclasses.field(repr=False)  # [S] eV/A
    mean_forces_std: float = 0.0  # eV/A, over force components
    std_floor: float = STD_FLOOR

    def as_dict(self) -> dict:
        """JSON-ready: an undefined statistic (Spearman of constant values) is None rather than NaN."""

        def finite(value: float | None) -> float | None:
            return None if value is None or not math.isfinite(value) else float(value)

        return {
            "members": self.members,
            "structures": self.structures,
            "spearman": finite(self.spearman),
            "forces_nll": finite(self.forces_nll),
            "energy_per_atom_nll": finite(self.energy_nll),
            "miscalibration_area": finite(self.miscalibration_area),
            "ence": finite(self.ence),
            "mean_forces_std": self.mean_forces_std,
            "std_floor": self.std_floor,
            "curve": {k: v.tolist() for k, v in self.curve.items()},
        }


class CalibrationAccumulator:
    """Collects an ensemble's errors and spreads batch by batch (``update``), then :meth:`report`.

    Forces count where the force metric of :mod:`mlip_cli.train.metrics` counts them (labelled, free atoms);
    energies per atom where the structure has an energy label. Memory: a few floats per force component,
    as the parity data ``mlip eval`` keeps.
    """

    def __init__(self, members: int):
        self.members = members
        self._force_error: list[np.ndarray] = []
        self._force_std: list[np.ndarray] = []
        self._energy_error: list[np.ndarray] = []
        self._energy_std: list[np.ndarray] = []
        self._structure_uncertainty: list[np.ndarray] = []
        self._structure_rmse: list[np.ndarray] = []

    def update(self, batch, out: dict) -> None:
        """Add one batch: ``out`` is the ensemble's output on ``batch`` (with labels)."""
        from .train.loss import force_mask

        def numpy(t: torch.Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float64).numpy()

        device = out["energy"].device
        natoms = batch.natoms.to(device).double()
        e_mask = batch.energy_mask.to(device)
        if bool(e_mask.any()):
            error = (out["energy"].double() - batch.energy.to(device).double()) / natoms
            self._energy_error.append(numpy(error[e_mask]))
            self._energy_std.append(numpy((out["energy_std"].double() / natoms)[e_mask]))
        mask = force_mask(batch, "free").to(device)
        if not bool(mask.any()):
            return
        error = out["forces"].double() - batch.forces.to(device).double()
        self._force_error.append(numpy(error[mask]).reshape(-1))
        self._force_std.append(numpy(out["forces_std"][mask]).reshape(-1))
        graph = batch.batch.to(device)
        labelled = torch.zeros(batch.num_graphs, dtype=torch.long, device=device).index_add_(0, graph, mask.long())
        sq = torch.zeros(batch.num_graphs, dtype=torch.float64, device=device)
        sq.index_add_(0, graph[mask], error[mask].square().sum(-1))
        has = labelled > 0
        rmse = (sq / (3.0 * labelled.clamp(min=1))).sqrt()
        self._structure_rmse.append(numpy(rmse[has]))
        self._structure_uncertainty.append(numpy(structure_uncertainty(out, batch, "rms", mask)[has]))

    def report(self) -> CalibrationReport | None:
        """The statistics over everything added; None when no structure had force labels."""
        if not self._force_error:
            return None
        f_err, f_std = np.concatenate(self._force_error), np.concatenate(self._force_std)
        s_unc, s_rmse = np.concatenate(self._structure_uncertainty), np.concatenate(self._structure_rmse)
        curve = calibration_curve(f_err, f_std)
        rmv = np.maximum(curve["rmv"], STD_FLOOR)
        energy_nll = None
        if self._energy_error:
            energy_nll = gaussian_nll(np.concatenate(self._energy_error), np.concatenate(self._energy_std))
        return CalibrationReport(
            members=self.members,
            structures=int(s_unc.size),
            spearman=spearman(s_unc, s_rmse),
            forces_nll=gaussian_nll(f_err, f_std),
            energy_nll=energy_nll,
            miscalibration_area=miscalibration_area(f_err, f_std),
            ence=float(np.mean(np.abs(rmv - curve["rmse"]) / rmv)),
            curve=curve,
            structure_uncertainty=s_unc,
            structure_force_rmse=s_rmse,
            mean_forces_std=float(np.mean(f_std)),
        )


def plot_calibration(report: CalibrationReport, out_png: str | Path, title: str = "") -> Path:
    """Two panels: binned predicted std (RMV) against observed force RMSE with the y = x line, and per-structure
    predicted uncertainty against actual force RMSE (Spearman's rho in the title); log axes, meV/A."""
    from .train.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, (ax_curve, ax_scatter) = plt.subplots(1, 2, figsize=(9.6, 4.4))
    rmv, rmse = 1000.0 * report.curve["rmv"], 1000.0 * report.curve["rmse"]
    ax_curve.plot(rmv, rmse, marker="o", label="force components, equal-count bins")
    positive = np.concatenate([rmv, rmse])
    positive = positive[positive > 0]
    lo, hi = (float(positive.min()) / 1.5, float(positive.max()) * 1.5) if positive.size else (0.1, 10.0)
    ax_curve.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="y = x (calibrated)")
    ax_curve.set_title(f"calibration  miscalibration area {report.miscalibration_area:.3f}")
    ax_curve.set_xlabel("predicted std, RMV (meV/A)")
    ax_curve.set_ylabel("observed RMSE (meV/A)")
    ax_curve.legend(fontsize=8)
    unc, err = 1000.0 * report.structure_uncertainty, 1000.0 * report.structure_force_rmse
    ax_scatter.scatter(unc, err, s=6, alpha=0.6, rasterized=True)
    both = np.concatenate([unc, err])
    if both.size:
        ax_scatter.plot([both.min(), both.max()], [both.min(), both.max()], color="k", lw=0.8, label="y = x")
        ax_scatter.legend(fontsize=8)
    ax_scatter.set_title(f"per structure  Spearman {report.spearman:.3f}")
    ax_scatter.set_xlabel("predicted force uncertainty (meV/A)")
    ax_scatter.set_ylabel("force RMSE (meV/A)")
    for ax, values in ((ax_curve, positive), (ax_scatter, both)):
        if values.size and np.all(values > 0):  # log axes only where every value can be drawn
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels overlap on short decades
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png, title)
