"""The symmetrisation gap: does the data have a symmetry? (the release test of automatic symmetry weights)

Write a model's prediction as ``f = f_sym + f_anti``, with ``f_sym`` its average over a symmetry group. If the
labels have the symmetry, ``f_anti`` can only fit noise, and on held-out data dropping it does not raise the
loss (in expectation it lowers it by ``|f_anti|^2``); if the labels break the symmetry, ``f_anti`` carries
signal and dropping it raises the loss. The gap ``T(f_sym) / T(f) - 1`` on validation data is therefore
``<= 0`` up to noise for a symmetry that holds and positive for one that is broken, with no scale to tune.

Groups: ``rotation``: ``rotations`` Haar-random rotations per structure (a Monte Carlo average; its leftover
anti-symmetric part shrinks as 1/rotations); ``reflection``: ``{identity, inversion}`` (exact). Energies are
averaged; forces are rotated back, ``F_sym(x) = mean_g g^T F(g x)``. Stress is left out of the loss here.
"""

from __future__ import annotations

import torch

from mlip_kernels.wigner import random_rotation

from ..models.soft_equivariance import transform_batch
from .distributed import DistInfo, all_reduce_sum
from .recipe import LossSection

__all__ = ["group_elements", "symmetrized_prediction", "symmetrization_gaps"]


def group_elements(kind: str, num_graphs: int, rotations: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The transforms averaged over for one symmetry type, each ``[num_graphs, 3, 3]`` (float64)."""
    if kind == "rotation":
        return [random_rotation(num_graphs, generator=generator) for _ in range(rotations)]
    if kind == "reflection":
        eye = torch.eye(3, dtype=torch.float64).expand(num_graphs, 3, 3)
        return [eye, -eye]
    raise ValueError(f"unknown symmetry type {kind!r}; known: rotation, reflection")


def symmetrized_prediction(model, batch, elements: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``E_sym(x) = mean_g E(g x)`` and ``F_sym(x) = mean_g g^T F(g x)`` (detached).

    Shapes:
        elements: list of ``[B, 3, 3]`` -> energy ``[B]``, forces ``[N, 3]``.
    """
    energy, forces = 0.0, 0.0
    for g in elements:
        out = model(transform_batch(batch, g), compute_forces=True)
        R = g.to(device=out["forces"].device, dtype=out["forces"].dtype).index_select(0, batch.batch)
        energy = energy + out["energy"].detach()
        forces = forces + torch.einsum("ni,nij->nj", out["forces"].detach(), R)  # row vectors: F' R = R^T F'
    return {"energy": energy / len(elements), "forces": forces / len(elements)}


def _sse(batch, out: dict) -> torch.Tensor:
    """Squared errors and counts: [energy per atom SSE, energy labels, force SSE, force components] (float64)."""
    dtype = out["energy"].dtype
    em, fm = batch.energy_mask, batch.forces_mask
    e = (out["energy"][em] - batch.energy[em].to(dtype)) / batch.natoms[em].to(dtype)
    f = out["forces"][fm] - batch.forces[fm].to(dtype)
    return torch.tensor([float((e * e).sum()), float(em.sum()), float((f * f).sum()), 3.0 * float(fm.sum())],
                        dtype=torch.float64)


def symmetrization_gaps(model, graphs, weights: LossSection, batch_size: int, device: torch.device,
                        types=("rotation", "reflection"), info: DistInfo | None = None, rotations: int = 4,
                        max_structures: int = 128, seed: int = 0) -> dict[str, float]:
    """Per symmetry type, ``T(f_sym) / T(f) - 1`` of the energy/force loss (``weights``) over up to
    ``max_structures`` structures of ``graphs``; with ``info`` the processes share the work."""
    info = info or DistInfo()
    generator = torch.Generator().manual_seed(seed)
    mine = list(range(info.rank, min(len(graphs), max_structures), info.world))
    sums = torch.zeros(1 + len(types), 4, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for start in range(0, len(mine), batch_size):
        batch = graphs.batch(mine[start:start + batch_size]).to(device)
        out = model(batch, compute_forces=True)
        sums[0] += _sse(batch, {k: out[k].detach() for k in ("energy", "forces")})
        for i, kind in enumerate(types, start=1):
            sums[i] += _sse(batch, symmetrized_prediction(
                model, batch, group_elements(kind, batch.num_graphs, rotations, generator)))
    model.train(was_training)
    all_reduce_sum(sums, info)

    def loss(row: torch.Tensor) -> float:
        e = weights.energy * row[0] / row[1] if row[1] > 0 else 0.0
        f = weights.forces * row[2] / row[3] if row[3] > 0 else 0.0
        return float(e + f)

    base = loss(sums[0])
    return {kind: (loss(sums[i]) / base - 1.0 if base > 0 else 0.0) for i, kind in enumerate(types, start=1)}
