"""Plots of a run: the learning curve (from metrics.csv) and parity plots (from evaluation pairs)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["plot_learning_curve", "plot_parity"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: str | Path, title: str = "") -> Path:
    """Title, lay out, write (PNG, 110 dpi) and close ``fig``; returns the path."""
    plt = _pyplot()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _column(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    if not pairs:
        return np.empty(0), np.empty(0)
    x, y = zip(*pairs)
    return np.asarray(x), np.asarray(y)


def plot_learning_curve(metrics_csv: str | Path, out_png: str | Path) -> Path | None:
    """Training loss and validation energy/force errors against step (log scale); None without rows."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.exists():
        return None
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("train_loss", "training loss", None),
        ("valid_energy_per_atom_rmse", "valid energy RMSE", "meV/atom"),
        ("valid_forces_rmse", "valid force RMSE", "meV/A"),
    ]
    for ax, (key, title, unit) in zip(axes, panels):
        x, y = _column(rows, key)
        if len(x):
            ax.plot(x, y, marker="o", ms=3)
            if np.all(y > 0):
                ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        if unit:
            ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def plot_parity(pairs: dict[str, np.ndarray], out_png: str | Path, title: str = "") -> Path:
    """Reference vs predicted per-atom energy and force components, with the y = x line and the RMSE."""
    plt = _pyplot()
    panels = [
        (k, u, s)
        for k, u, s in (("energy_per_atom", "eV/atom", 1.0), ("forces", "eV/A", 1.0), ("stress", "eV/A^3", 1.0))
        if k in pairs
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.2), squeeze=False)
    for ax, (key, unit, _) in zip(axes[0], panels):
        ref, pred = pairs[key]
        ax.scatter(ref, pred, s=4, alpha=0.5, rasterized=True)
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
        ax.set_title(f"{key.replace('_', ' ')}  RMSE {1000 * rmse:.3g} m{unit}")
        ax.set_xlabel(f"reference ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png, title)
