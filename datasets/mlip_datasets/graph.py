"""Graphs of atoms as torch tensors, and batches of them.

Edge convention (as in :mod:`mlip_datasets.neighbors`): ``edge_index[0]`` is the source atom i, ``edge_index[1]``
the neighbour j, and the edge vector is ``positions[j] - positions[i] + shifts @ cell``. Shifts are integer cell
shifts stored in the float dtype of the positions, so models (and the strain derivative for stress) can multiply
them with the cell directly.

A batch concatenates graphs: atoms and edges of structure ``b`` sit at ``ptr[b]:ptr[b+1]`` and edge indices are
offset accordingly; ``batch`` maps each atom to its structure. Missing labels are zero-filled with a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from .neighbors import neighbor_list
from .record import Structure

_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


@dataclass
class AtomicGraph:
    """One structure with its neighbour graph. Labels are ``None`` when the record has none.

    Shapes:
        numbers (N,) long, positions (N, 3), cell (3, 3), pbc (3,) bool, edge_index (2, E) long, shifts (E, 3),
        energy () (always float64), forces (N, 3), stress (3, 3), charge (), spin (), fixed (N,) bool.
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    charge: torch.Tensor | None = None
    spin: torch.Tensor | None = None
    index: int = -1
    """Position of the record in its data set (-1 when unknown)."""
    fixed: torch.Tensor | None = None
    """Atoms held fixed in the calculation that made the labels (OC20's sub-surface slab); None: none known."""

    @property
    def natoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def has(self, label: str) -> bool:
        """Whether ``label`` (energy, forces, stress, charge, spin) is present."""
        return getattr(self, label) is not None


def structure_to_graph(
    structure: Structure,
    cutoff: float,
    dtype: torch.dtype = torch.float64,
    backend: str = "auto",
    index: int = -1,
    fixed_tags: Sequence[int] | None = None,
) -> AtomicGraph:
    """Build the neighbour graph of ``structure`` within ``cutoff`` (Angstrom) as tensors of ``dtype``.

    ``fixed_tags``: where the record marks no fixed atoms, atoms whose tag is listed count as fixed.
    """
    s = structure
    fixed = s.fixed
    if fixed is None and fixed_tags is not None and s.tags is not None:
        fixed = np.isin(s.tags, np.asarray(list(fixed_tags), dtype=np.int64))
    src, dst, shifts = neighbor_list(s.positions, s.cell, s.pbc, cutoff, backend=backend)

    np_dtype = _NUMPY_DTYPES.get(dtype)

    def real(x) -> torch.Tensor | None:
        if x is None:
            return None
        if np_dtype is not None:  # casting in numpy is several times cheaper than Tensor.to for small arrays
            return torch.from_numpy(np.array(x, dtype=np_dtype))
        return torch.from_numpy(np.array(x, dtype=np.float64)).to(dtype)

    return AtomicGraph(
        numbers=torch.from_numpy(np.ascontiguousarray(s.numbers, dtype=np.int64)),
        positions=real(s.positions),
        cell=real(s.cell),
        pbc=torch.from_numpy(np.asarray(s.pbc, dtype=bool).copy()),
        edge_index=torch.from_numpy(np.stack([src, dst])),
        shifts=real(shifts),
        # float64 whatever ``dtype``: a total energy of -9400 eV in float32 is only good to ~1 meV
        energy=None if s.energy is None else torch.tensor(float(s.energy), dtype=torch.float64),
        forces=real(s.forces),
        stress=real(s.stress),
        charge=real(s.charge),
        spin=real(s.spin),
        index=index,
        fixed=None if fixed is None else torch.from_numpy(np.asarray(fixed, dtype=bool).copy()),
    )


def edge_vectors(
    positions: torch.Tensor,
    cell: torch.Tensor,
    shifts: torch.Tensor,
    edge_index: torch.Tensor,
    node_graph: torch.Tensor,
) -> torch.Tensor:
    """The one definition of an edge vector: ``positions[j] - positions[i] + shifts @ cell[structure of i]``.

    Models call it with strained positions and cells (stress), so it takes tensors rather than a batch.

    Shapes:
        positions (N, 3), cell (B, 3, 3) (or (3, 3) for one structure), shifts (E, 3), edge_index (2, E),
        node_graph (N,) structure of each atom -> (E, 3).
    """
    src, dst = edge_index[0], edge_index[1]
    edge_cell = cell.reshape(-1, 3, 3).index_select(0, node_graph.index_select(0, src))
    return positions[dst] - positions[src] + torch.einsum("ei,eij->ej", shifts, edge_cell)


@dataclass
class Batch:
    """Several graphs concatenated. Labels a structure lacks are zeros, with ``*_mask`` False.

    Shapes:
        numbers (N,), positions (N, 3), batch (N,), cell (B, 3, 3), pbc (B, 3), ptr (B+1,), natoms (B,),
        edge_index (2, E), shifts (E, 3), energy (B,) float64, forces (N, 3), stress (B, 3, 3), charge (B,), spin (B,),
        energy_mask/stress_mask/charge_mask/spin_mask (B,) bool, forces_mask (N,) bool (per atom), index (B,),
        fixed (N,) bool (atoms held fixed when the labels were made; False where unknown).
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    natoms: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor
    charge: torch.Tensor
    spin: torch.Tensor
    energy_mask: torch.Tensor
    forces_mask: torch.Tensor
    stress_mask: torch.Tensor
    charge_mask: torch.Tensor
    spin_mask: torch.Tensor
    index: torch.Tensor
    fixed: torch.Tensor

    @property
    def num_graphs(self) -> int:
        return int(self.natoms.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def edge_vectors(self) -> torch.Tensor:
        """Edge vectors ``positions[j] - positions[i] + shifts @ cell[structure of i]``. Shapes: -> (E, 3)."""
        return edge_vectors(self.positions, self.cell, self.shifts, self.edge_index, self.batch)

    def to(self, device=None, dtype: torch.dtype | None = None, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device``; ``dtype`` converts the floating-point ones (energies stay float64)."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            convert = dtype is not None and t.is_floating_point() and f.name != "energy"
            out[f.name] = t.to(device=device, dtype=dtype if convert else None, non_blocking=non_blocking)
        return Batch(**out)

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


def collate_graphs(graphs: Sequence[AtomicGraph]) -> Batch:
    """Concatenate graphs into one :class:`Batch` (usable as a DataLoader ``collate_fn``)."""
    if not graphs:
        raise ValueError("cannot collate an empty list of graphs")
    dtype = graphs[0].positions.dtype
    natoms = torch.tensor([g.natoms for g in graphs], dtype=torch.long)
    ptr = torch.zeros(len(graphs) + 1, dtype=torch.long)
    torch.cumsum(natoms, 0, out=ptr[1:])
    edge_index = torch.cat([g.edge_index + ptr[k] for k, g in enumerate(graphs)], dim=1)
    batch = torch.repeat_interleave(torch.arange(len(graphs)), natoms)

    def per_structure(
        name: str, shape: tuple[int, ...], kind: torch.dtype = dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        values = [getattr(g, name) for g in graphs]
        mask = torch.tensor([v is not None for v in values], dtype=torch.bool)
        zero = torch.zeros(shape, dtype=kind)
        return torch.stack([zero if v is None else v.reshape(shape).to(kind) for v in values]), mask

    energy, energy_mask = per_structure("energy", (), torch.float64)
    stress, stress_mask = per_structure("stress", (3, 3))
    charge, charge_mask = per_structure("charge", ())
    spin, spin_mask = per_structure("spin", ())
    forces = torch.cat([torch.zeros(g.natoms, 3, dtype=dtype) if g.forces is None else g.forces for g in graphs])
    has_forces = torch.tensor([g.forces is not None for g in graphs], dtype=torch.bool)
    return Batch(
        numbers=torch.cat([g.numbers for g in graphs]),
        positions=torch.cat([g.positions for g in graphs]),
        cell=torch.stack([g.cell for g in graphs]),
        pbc=torch.stack([g.pbc for g in graphs]),
        edge_index=edge_index,
        shifts=torch.cat([g.shifts for g in graphs]),
        batch=batch,
        ptr=ptr,
        natoms=natoms,
        energy=energy,
        forces=forces,
        stress=stress,
        charge=charge,
        spin=spin,
        energy_mask=energy_mask,
        forces_mask=has_forces[batch],
        stress_mask=stress_mask,
        charge_mask=charge_mask,
        spin_mask=spin_mask,
        index=torch.tensor([g.index for g in graphs], dtype=torch.long),
        fixed=torch.cat([torch.zeros(g.natoms, dtype=torch.bool) if g.fixed is None else g.fixed for g in graphs]),
    )


def unlabelled_batch(
    numbers: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
    node_graph: torch.Tensor,
    charge: Sequence[float | None] | None = None,
    spin: Sequence[float | None] | None = None,
    index: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
) -> Batch:
    """A :class:`Batch` without labels (what a model call needs), from tensors already on their device.

    The calculator and batched relaxation build one on every step, so this skips ``collate_graphs``' per-graph
    work. Label fields are zeros with False masks; ``charge``/``spin`` (one entry per structure, ``None`` for
    unknown) set their masks; ``index`` defaults to -1 for every structure.

    Shapes:
        numbers (N,), positions (N, 3), cell (B, 3, 3), pbc (B, 3), edge_index (2, E), shifts (E, 3),
        node_graph (N,) structure of each atom, in order.
    """
    dtype = dtype or positions.dtype
    device = positions.device
    num = int(cell.reshape(-1, 3, 3).shape[0])
    n = int(numbers.shape[0])
    natoms = torch.bincount(node_graph, minlength=num) if n else torch.zeros(num, dtype=torch.long, device=device)
    ptr = torch.zeros(num + 1, dtype=torch.long, device=device)
    torch.cumsum(natoms, 0, out=ptr[1:])
    no = torch.zeros(num, dtype=torch.bool, device=device)

    def optional(values: Sequence[float | None] | None) -> tuple[torch.Tensor, torch.Tensor]:
        values = [None] * num if values is None else list(values)
        data = torch.tensor([0.0 if v is None else float(v) for v in values], dtype=dtype, device=device)
        return data, torch.tensor([v is not None for v in values], dtype=torch.bool, device=device)

    charge_t, charge_mask = optional(charge)
    spin_t, spin_mask = optional(spin)
    return Batch(
        numbers=numbers,
        positions=positions.to(dtype),
        cell=cell.to(dtype).reshape(num, 3, 3),
        pbc=pbc.reshape(num, 3),
        edge_index=edge_index,
        shifts=shifts.to(dtype),
        batch=node_graph,
        ptr=ptr,
        natoms=natoms,
        energy=torch.zeros(num, dtype=torch.float64, device=device),
        forces=torch.zeros(n, 3, dtype=dtype, device=device),
        stress=torch.zeros(num, 3, 3, dtype=dtype, device=device),
        charge=charge_t,
        spin=spin_t,
        energy_mask=no,
        forces_mask=torch.zeros(n, dtype=torch.bool, device=device),
        stress_mask=no,
        charge_mask=charge_mask,
        spin_mask=spin_mask,
        index=torch.full((num,), -1, dtype=torch.long, device=device)
        if index is None
        else torch.as_tensor(list(index), dtype=torch.long, device=device),
        fixed=torch.zeros(n, dtype=torch.bool, device=device),
    )
