"""Relax many structures together: one model call per step for all of them, FIRE or L-BFGS in torch.

Structures are grouped into chunks of at most ``batch_atoms`` atoms (one chunk for a hundred small ones). In a
chunk every step is: build the batch (cached skin neighbour lists, filtered to the cutoff in one vectorised
pass), one model call, the constraint, the per-structure checks (converged / NaN / exploded / out of steps),
finished structures leave the batch, one optimizer step for the rest. Cell relaxation is not batched (it goes
through ASE's ``FrechetCellFilter`` per structure, :mod:`mlip_cli.relax.ase_path`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mlip_datasets.graph import Batch, edge_vectors, unlabelled_batch
from mlip_datasets.record import Structure

from ..calculator import DEFAULT_SKIN, SkinNeighborList
from .optimizers import OPTIMIZERS, segment_max, segment_sum
from .result import (
    CONVERGED,
    FAILED,
    NOT_CONVERGED,
    RelaxResult,
    RelaxSettings,
    failure_reason,
    finished_structure,
    fixed_mask,
    frame,
)

__all__ = ["relax_batched", "chunks_by_atoms"]


def chunks_by_atoms(sizes: Sequence[int], batch_atoms: int) -> list[list[int]]:
    """Consecutive groups of indices with at most ``batch_atoms`` atoms each (a larger structure is alone)."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if current and total + n > batch_atoms:
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        groups.append(current)
    return groups


class _Chunk:
    """The active structures of one chunk as flat tensors, with their neighbour lists.

    Shapes: positions ``[N, 3]`` float64, numbers ``[N]``, graph ``[N]``, free ``[N]`` bool, cell ``[B, 3, 3]``,
    pbc ``[B, 3]``.
    """

    def __init__(
        self, structures: list[Structure], ids: list[int], fix_tags, cutoff: float, skin: float, device: torch.device
    ):
        self.structures, self.ids, self.device = structures, ids, device
        self.cutoff, self.skin = cutoff, skin
        sizes = [s.natoms for s in structures]
        self.natoms = torch.tensor(sizes, dtype=torch.long, device=device)
        self.positions = torch.as_tensor(np.concatenate([s.positions for s in structures]), device=device)
        self.numbers = torch.as_tensor(np.concatenate([s.numbers for s in structures]), device=device)
        self.free = ~torch.as_tensor(np.concatenate([fixed_mask(s, fix_tags) for s in structures]), device=device)
        self.cell = torch.as_tensor(np.stack([s.cell for s in structures]), device=device)
        self.pbc = torch.as_tensor(np.stack([s.pbc for s in structures]), device=device)
        self.lists = [SkinNeighborList(cutoff, skin) for _ in structures]
        self._update_index()

    def _update_index(self) -> None:
        num = len(self.ids)
        self.graph = torch.repeat_interleave(torch.arange(num, device=self.device), self.natoms)
        self.ptr = torch.zeros(num + 1, dtype=torch.long, device=self.device)
        torch.cumsum(self.natoms, 0, out=self.ptr[1:])
        self._edges = None  # concatenated lists: rebuilt on the next call

    def _gather_edges(self) -> None:
        """Rebuild the lists that went stale and concatenate all of them with atom offsets."""
        positions = self.positions.cpu().numpy()
        ptr = self.ptr.tolist()
        src, dst, shifts, refs = [], [], [], []
        for b, nl in enumerate(self.lists):
            a, z = ptr[b], ptr[b + 1]
            s = self.structures[b]
            i, j, shift = nl.skin_edges(positions[a:z], s.cell, s.pbc, s.numbers)
            src.append(i + a)
            dst.append(j + a)
            shifts.append(shift)
            refs.append(nl.reference)
        self._edges = tuple(torch.as_tensor(np.concatenate(x), device=self.device) for x in (src, dst, shifts))
        # each atom's position when its structure's list was built: the lists stay valid while no atom has
        # moved more than skin/2 from there
        self._ref = torch.as_tensor(np.concatenate(refs), device=self.device)

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs closer than the cutoff now: ``edge_index [2, E]``, ``shifts [E, 3]`` (float64)."""
        if self._edges is not None and len(self.positions):
            moved = float((self.positions - self._ref).norm(dim=1).max())
            if self.skin == 0 or not moved <= 0.5 * self.skin:
                self._edges = None
        if self._edges is None:
            self._gather_edges()
        src, dst, shifts = self._edges
        shifts = shifts.to(self.positions.dtype)
        edge_index = torch.stack([src, dst])
        vec = edge_vectors(self.positions, self.cell, shifts, edge_index, self.graph)
        keep = (vec * vec).sum(dim=1) < self.cutoff**2
        return edge_index[:, keep], shifts[keep]

    def batch(self, dtype: torch.dtype) -> Batch:
        edge_index, shifts = self.edges()
        return unlabelled_batch(
            self.numbers,
            self.positions,
            self.cell,
            self.pbc,
            edge_index,
            shifts,
            self.graph,
            charge=[s.charge for s in self.structures],
            spin=[s.spin for s in self.structures],
            index=self.ids,
            dtype=dtype,
        )

    def keep(self, structures: torch.Tensor) -> torch.Tensor:
        """Keep only the structures where ``structures [B]`` is True; returns the atom mask ``[N]``."""
        atoms = structures[self.graph]
        kept = structures.tolist()
        self.structures = [s for s, k in zip(self.structures, kept) if k]
        self.ids = [i for i, k in zip(self.ids, kept) if k]
        self.lists = [nl for nl, k in zip(self.lists, kept) if k]
        self.natoms, self.cell, self.pbc = self.natoms[structures], self.cell[structures], self.pbc[structures]
        self.positions, self.numbers, self.free = self.positions[atoms], self.numbers[atoms], self.free[atoms]
        self._update_index()
        return atoms


def relax_batched(
    model: torch.nn.Module,
    structures: Sequence[Structure],
    settings: RelaxSettings,
    *,
    skin: float = DEFAULT_SKIN,
    batch_atoms: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> list[RelaxResult]:
    """Relax ``structures`` at fixed cell, many per model call.

    Args:
        model: an mlip :class:`~mlip_cli.models.Potential` (eval mode); its dtype is used for the model call,
            the optimizer state is float64 like ASE's.
        structures: the inputs (their ``fixed`` flags are honoured).
        settings: what to do; ``optimizer`` is ``"FIRE"`` or ``"LBFGS"`` (ASE's algorithms and defaults,
            :mod:`.optimizers`), converged when every free atom has ``|F| < fmax``; ``relax_cell`` is not batched.
        skin: neighbour-list skin (A).
        batch_atoms: at most this many atoms per model call.
        progress: called with the number of finished structures.

    Returns:
        One :class:`RelaxResult` per input, in input order.
    """
    if settings.optimizer.upper() not in OPTIMIZERS or settings.relax_cell:
        raise ValueError(
            f"batched relaxation supports {', '.join(OPTIMIZERS)} at fixed cell, not {settings.optimizer!r}"
            + (" with relax_cell" if settings.relax_cell else "")
        )
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    results: list[RelaxResult | None] = [None] * len(structures)
    done = 0
    for group in chunks_by_atoms([s.natoms for s in structures], batch_atoms):
        chunk = [structures[i] for i in group]
        for r in _relax_chunk(model, chunk, group, settings, skin, device):
            results[r.index] = r
            done += 1
            if progress is not None:
                progress(done)
    return results  # type: ignore[return-value]


def _relax_chunk(model, structures: list[Structure], ids: list[int], settings: RelaxSettings, skin: float, device):
    chunk = _Chunk(structures, ids, settings.fix_tags, float(model.cutoff), skin, device)
    optimizer = OPTIMIZERS[settings.optimizer.upper()]
    opt = optimizer(chunk.graph, len(ids), dtype=torch.float64, **settings.optimizer_options)
    fmax, steps, max_force, trajectory = settings.fmax, settings.steps, settings.max_force, settings.trajectory
    frames: dict[int, list[Structure]] = {i: [] for i in ids} if trajectory else {}
    for step in range(steps + 1):
        out = model(chunk.batch(model.dtype), compute_forces=True)
        energy = out["energy"].detach().to(torch.float64)
        forces = out["forces"].detach().to(torch.float64)
        num = len(chunk.ids)
        constrained = forces * chunk.free[:, None]
        f_atom = constrained.norm(dim=1)
        nonfinite = segment_sum((~torch.isfinite(forces).all(dim=1)).to(torch.float64), chunk.graph, num) > 0
        fmax_b = segment_max(torch.nan_to_num(f_atom, nan=0.0, posinf=0.0), chunk.graph, num)
        bad = nonfinite | ~torch.isfinite(energy) | (fmax_b > max_force)
        converged = (fmax_b < fmax) & ~bad
        finished = bad | converged | (step == steps)
        if bool(finished.any()) or trajectory:
            pos_np, e_np, f_np = chunk.positions.cpu().numpy(), energy.cpu().numpy(), forces.cpu().numpy()
            ptr, fm = chunk.ptr.tolist(), fmax_b.cpu().numpy()
            for b in range(num):
                s, a, z = chunk.structures[b], ptr[b], ptr[b + 1]
                if trajectory and not bool(bad[b]):
                    frames[chunk.ids[b]].append(frame(s, pos_np[a:z], s.cell, e_np[b], f_np[a:z], step))
                if not bool(finished[b]):
                    continue
                index = chunk.ids[b]
                if bool(bad[b]):
                    reason = failure_reason(float(e_np[b]), f_np[a:z], float(fm[b]), max_force)
                    yield RelaxResult(index, FAILED, step, None, None, None, f"{reason} at step {step}")
                    continue
                status = CONVERGED if bool(converged[b]) else NOT_CONVERGED
                final = finished_structure(s, pos_np[a:z], s.cell, e_np[b], f_np[a:z], None, status, step, fm[b])
                yield RelaxResult(
                    index,
                    status,
                    step,
                    float(e_np[b]),
                    float(fm[b]),
                    final,
                    trajectory=frames.pop(index) if trajectory else None,
                )
        if bool(finished.all()):
            return
        if bool(finished.any()):
            stay = ~finished
            atoms = chunk.keep(stay)
            opt.keep(stay, atoms, chunk.graph)
            constrained, forces = constrained[atoms], forces[atoms]
        dr = opt.step(constrained, chunk.positions) * chunk.free[:, None]
        chunk.positions = chunk.positions + dr
