"""The training loss: weighted mean squared errors of per-atom energy, force components and stress."""

from __future__ import annotations

import torch

from .recipe import LossSection

__all__ = ["force_mask", "label_counts", "weighted_loss"]


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
    batch, out: dict[str, torch.Tensor], weights: LossSection, counts: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sum_k w_k * (sum of squared errors of k) / counts[k]``.

    ``counts`` are the label counts of the *global* batch (summed over processes), so the per-process losses
    add up to the loss of the global batch. Returns the loss and the unweighted sums of squared errors
    (``energy`` per atom in eV, ``forces`` in eV/A, ``stress`` in eV/A^3), detached.
    """
    dtype = out["energy"].dtype
    loss = out["energy"].new_zeros(())
    sse: dict[str, torch.Tensor] = {}
    if weights.energy > 0 and counts[0] > 0:
        mask = batch.energy_mask
        err = (out["energy"][mask] - batch.energy[mask].to(dtype)) / batch.natoms[mask].to(dtype)
        sse["energy"] = (err * err).sum()
        loss = loss + weights.energy * sse["energy"] / float(counts[0])
    if weights.forces > 0 and counts[1] > 0:
        mask = force_mask(batch, weights.forces_on)
        err = out["forces"][mask] - batch.forces[mask].to(dtype)
        sse["forces"] = (err * err).sum()
        loss = loss + weights.forces * sse["forces"] / float(counts[1])
    if weights.stress > 0 and counts[2] > 0:
        mask = batch.stress_mask
        err = out["stress"][mask] - batch.stress[mask].to(dtype)
        sse["stress"] = (err * err).sum()
        loss = loss + weights.stress * sse["stress"] / float(counts[2])
    return loss, {k: v.detach() for k, v in sse.items()}
