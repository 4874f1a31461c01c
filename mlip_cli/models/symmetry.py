"""The symmetry group of a potential, O(3), by its two generators: the one definition that TransIP's regularisers,
the symmetrisation gap of training and the equivariance error of ``mlip eval`` share.

* ``rotation``: the proper rotations SO(3), drawn Haar-random (:func:`mlip_kernels.wigner.random_rotation`);
* ``inversion``: ``r -> -r``, the group ``{I, -I}``.

Every orthogonal map is a rotation or a rotation times the inversion, so the two generate O(3). Each can hold while
the other fails (a chiral energy keeps rotations and breaks the inversion; an easy axis does the opposite), which a
random mirror (a rotation times the inversion) could not tell apart. A group element acts on a whole batch through
:func:`transform_batch`.
"""

from __future__ import annotations

import dataclasses

import torch

from mlip_kernels.wigner import random_rotation

__all__ = ["ROTATION", "INVERSION", "SYMMETRY_TYPES", "RENAMED_TYPES", "draw", "averaging_elements", "transform_batch"]

ROTATION = "rotation"
INVERSION = "inversion"
#: the generators' names, in the order regularisers, metrics and reports list them.
SYMMETRY_TYPES = (ROTATION, INVERSION)
#: earlier names of the types (``inversion`` was called ``reflection``), for reading old checkpoints and metrics.
RENAMED_TYPES = {"reflection": INVERSION}


def _check(kind: str) -> None:
    if kind not in SYMMETRY_TYPES:
        raise ValueError(f"unknown symmetry type {kind!r}; known: {', '.join(SYMMETRY_TYPES)}")


def draw(kind: str, num_graphs: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One element of the generator ``kind`` per structure: a Haar-random rotation (from ``generator``, else torch's
    global RNG, so a resumed run replays it) or the inversion ``-I`` (no random draw).

    Shapes:
        -> ``[num_graphs, 3, 3]`` (float64).
    """
    _check(kind)
    if kind == ROTATION:
        return random_rotation(num_graphs, generator=generator)
    return -torch.eye(3, dtype=torch.float64).expand(num_graphs, 3, 3)


def averaging_elements(
    kind: str, num_graphs: int, rotations: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """The elements a prediction is averaged over to symmetrise it under ``kind``: ``rotations`` Haar-random
    rotations (a Monte Carlo average), or the identity and the inversion (the whole group, exact).

    Shapes:
        -> list of ``[num_graphs, 3, 3]`` (float64).
    """
    _check(kind)
    if kind == ROTATION:
        return [draw(ROTATION, num_graphs, generator) for _ in range(rotations)]
    eye = torch.eye(3, dtype=torch.float64).expand(num_graphs, 3, 3)
    return [eye, -eye]


def transform_batch(batch, R: torch.Tensor):
    """The batch with structure ``b`` moved by the orthogonal ``R[b]``: ``r -> R r`` for positions, cell vectors
    (rows), forces; ``sigma -> R sigma R^T``; energies, edges and integer shifts unchanged.

    Shapes:
        R ``[B, 3, 3]`` (or ``[3, 3]`` for all) -> a new batch (the input is not modified).
    """
    dtype = batch.positions.dtype
    R = R.to(device=batch.positions.device, dtype=dtype)
    if R.dim() == 2:
        R = R.expand(batch.num_graphs, 3, 3)
    Rt = R.transpose(1, 2)
    atom_Rt = Rt.index_select(0, batch.batch)
    changes = dict(
        positions=torch.einsum("ni,nij->nj", batch.positions, atom_Rt), cell=torch.bmm(batch.cell.to(dtype), Rt)
    )
    if getattr(batch, "forces", None) is not None:
        changes["forces"] = torch.einsum("ni,nij->nj", batch.forces.to(dtype), atom_Rt)
    if getattr(batch, "stress", None) is not None:
        changes["stress"] = R @ batch.stress.to(dtype) @ Rt
    return dataclasses.replace(batch, **changes)
