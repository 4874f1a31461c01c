"""The training loss: weighted mean squared errors of per-atom energy, force components and stress."""

from __future__ import annotations

import numpy as np
import torch

from .recipe import LossSection

__all__ = ["force_mask", "label_counts", "weighted_loss", "bootstrap_weights"]

# P(X <= k) for X ~ Poisson(1), k = 0..19 (beyond 19 the remaining mass is below 1e-18).
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1, dtype=np.float64)) for k in range(20)])


def bootstrap_weights(index: torch.Tensor, member: int, seed: int) -> torch.Tensor:
    """Each structure's Poisson(1) bootstrap weight for ensemble member ``member``.

    A function of ``(seed, member, record index)`` only (a counter-based hash, splitmix64), so a structure keeps
    its weight in every epoch, in any batch, in any worker or process, and after a resume, with no table of
    weights in memory. Shapes: index ``[B]`` (int64 record numbers) -> ``[B]`` float64.
    """
    x = index.cpu().numpy().astype(np.uint64)
    key = np.uint64((seed * 0x9E3779B1 + member * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        z = x * np.uint64(0x9E3779B97F4A7C15) + key
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    uniform = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    counts = np.searchsorted(_POISSON1_CDF, uniform, side="right")
    return torch.from_numpy(counts.astype(np.float64)).to(index.device)


def force_mask(batch, forces_on: str = "free") -> torch.Tensor:
    """Atoms whose force labels count: every labelled atom (``all``) or those not held fixed (``free``, what
    fairchem scores on OC20). Shapes: -> (N,) bool."""
    return batch.forces_mask & ~batch.fixed if forces_on == "free" else batch.forces_mask


def label_counts(batch, forces_on: str = "free") -> torch.Tensor:
    """Labelled structures (energy), force components and stress components in a batch, as float64 ``[3]``."""
    forces = float(force_mask(batch, forces_on).sum())
    return torch.tensor(
        [float(batch.energy_mask.sum()), 3.0 * forces, 9.0 * float(batch.stress_mask.sum())], dtype=torch.float64
    )


def weighted_loss(
    batch,
    out: dict[str, torch.Tensor],
    weights: LossSection,
    counts: torch.Tensor,
    structure_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sum_k w_k * (sum of squared errors of k) / counts[k]``.

    ``counts`` are the label counts of the *global* batch (summed over processes), so the per-process losses
    add up to the loss of the global batch. ``structure_weights`` ``[B]`` (bootstrap) multiply each structure's
    squared errors in the loss (the expected weight is 1, so ``counts`` stay the normaliser). Returns the loss
    and the unweighted sums of squared errors (``energy`` per atom in eV, ``forces`` in eV/A, ``stress`` in
    eV/A^3), detached.
    """
    dtype = out["energy"].dtype
    loss = out["energy"].new_zeros(())
    sse: dict[str, torch.Tensor] = {}
    per_atom = None if structure_weights is None else structure_weights.index_select(0, batch.batch)

    def weighed(squares: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        return squares.sum() if w is None else (squares * w.to(squares.dtype)).sum()

    if weights.energy > 0 and counts[0] > 0:
        mask = batch.energy_mask
        err = (out["energy"][mask] - batch.energy[mask].to(dtype)) / batch.natoms[mask].to(dtype)
        sse["energy"] = (err * err).sum()
        w = None if structure_weights is None else structure_weights[mask]
        loss = loss + weights.energy * weighed(err * err, w) / float(counts[0])
    if weights.forces > 0 and counts[1] > 0:
        mask = force_mask(batch, weights.forces_on)
        err = out["forces"][mask] - batch.forces[mask].to(dtype)
        sse["forces"] = (err * err).sum()
        w = None if per_atom is None else per_atom[mask][:, None]
        loss = loss + weights.forces * weighed(err * err, w) / float(counts[1])
    if weights.stress > 0 and counts[2] > 0:
        mask = batch.stress_mask
        err = out["stress"][mask] - batch.stress[mask].to(dtype)
        sse["stress"] = (err * err).sum()
        w = None if structure_weights is None else structure_weights[mask][:, None, None]
        loss = loss + weights.stress * weighed(err * err, w) / float(counts[2])
    return loss, {k: v.detach() for k, v in sse.items()}
