"""The symmetrisation gap: does the data have a symmetry? (the release test of automatic symmetry weights)

Write a model's prediction as ``f = f_sym + f_anti``, with ``f_sym`` its average over a symmetry group. If the
labels have the symmetry, ``f_anti`` can only fit noise, and on held-out data dropping it does not raise the
loss (in expectation it lowers it by ``|f_anti|^2``); if the labels break the symmetry, ``f_anti`` carries
signal and dropping it raises the loss. The gap ``(T(f_sym) - T(f)) / T(0)`` on validation data (``T`` the force
MSE, ``T(0)`` the labels' mean square) is therefore ``<= 0`` up to noise for a symmetry that holds, and for one that
is broken approaches the share of the labels' variance that the asymmetric part carries. The gap is measured in
units of the labels, not of the current error: a well-fitted model on correlated data (MD frames in similar
orientations) can lower a small error by a large factor with an orientation-dependent shortcut that carries
almost none of the labels' variance.

Groups (:func:`mlip_cli.models.symmetry.averaging_elements`): ``rotation``: ``rotations`` Haar-random rotations
per structure (a Monte Carlo average; its leftover anti-symmetric part shrinks as 1/rotations); ``inversion``:
``{identity, inversion}`` (exact). Energies are averaged; forces are rotated back, ``F_sym(x) = mean_g g^T F(g x)``.
Stress is left out here.
"""

from __future__ import annotations

import torch

from ..models.symmetry import SYMMETRY_TYPES, averaging_elements, transform_batch
from .distributed import DistInfo, all_reduce_sum

__all__ = ["symmetrized_prediction", "symmetrization_gaps"]


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
    """Squared errors: [energy per atom SSE, force SSE] (float64)."""
    dtype = out["energy"].dtype
    em, fm = batch.energy_mask, batch.forces_mask
    e = (out["energy"][em] - batch.energy[em].to(dtype)) / batch.natoms[em].to(dtype)
    f = out["forces"][fm] - batch.forces[fm].to(dtype)
    return torch.tensor([float((e * e).sum()), float((f * f).sum())], dtype=torch.float64)


def _label_moments(batch) -> torch.Tensor:
    """[energy labels, sum E/N, sum (E/N)^2, force components, sum F^2] (float64)."""
    em, fm = batch.energy_mask, batch.forces_mask
    e = batch.energy[em].double() / batch.natoms[em].double()
    f = batch.forces[fm].double()
    return torch.tensor(
        [float(em.sum()), float(e.sum()), float((e * e).sum()), 3.0 * float(fm.sum()), float((f * f).sum())],
        dtype=torch.float64,
    )


def symmetrization_gaps(
    model,
    graphs,
    batch_size: int,
    device: torch.device,
    types=SYMMETRY_TYPES,
    info: DistInfo | None = None,
    rotations: int = 4,
    max_structures: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """Per symmetry type, ``(T(f_sym) - T(f)) / T(0)`` over up to ``max_structures`` structures of ``graphs``.

    ``T`` is the force MSE, and ``T(0)`` that of predicting zero forces (the labels' mean square), so the gap is
    the share of the labels' variance that only the asymmetric part of the model explains; without force labels,
    the per-atom energy MSE over the variance of the per-atom energies. With ``info`` the processes share the work.
    """
    info = info or DistInfo()
    generator = torch.Generator().manual_seed(seed)
    mine = list(range(info.rank, min(len(graphs), max_structures), info.world))
    sse = torch.zeros(1 + len(types), 2, dtype=torch.float64)
    moments = torch.zeros(5, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for start in range(0, len(mine), batch_size):
        batch = graphs.batch(mine[start : start + batch_size]).to(device)
        out = model(batch, compute_forces=True)
        sse[0] += _sse(batch, {k: out[k].detach() for k in ("energy", "forces")})
        moments += _label_moments(batch)
        for i, kind in enumerate(types, start=1):
            sse[i] += _sse(
                batch,
                symmetrized_prediction(model, batch, averaging_elements(kind, batch.num_graphs, rotations, generator)),
            )
    model.train(was_training)
    all_reduce_sum(sse, info)
    all_reduce_sum(moments, info)
    n_e, sum_e, sum_e2, n_f, sum_f2 = moments.tolist()
    if n_f > 0:
        column, scale = 1, sum_f2
    else:
        column, scale = 0, sum_e2 - sum_e * sum_e / n_e if n_e > 0 else 0.0
    if scale <= 0:
        return {kind: 0.0 for kind in types}
    return {kind: float(sse[i, column] - sse[0, column]) / scale for i, kind in enumerate(types, start=1)}
