"""The potential wrapper: batch -> energy, forces = -dE/dpositions and stress from the strain derivative.

Energy model: per-atom energy ``e_n = scale * e_int(n) + shift + E0[Z_n]``; total energy per structure is the
sum over its atoms. Forces and stress are autograd derivatives of that energy (conservative).

Stress (ASE convention, positive under tension): the positions and the cell are displaced by a symmetric
strain, ``r -> r (1 + eps)``, ``cell -> cell (1 + eps)`` (cell vectors as rows; periodic shifts are integer
multiples of the cell so edge vectors strain with it), and ``sigma = (1/V) dE/d(eps)`` at ``eps = 0``.
It is computed only for periodic structures (any ``pbc`` axis and a non-degenerate cell); others get zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_datasets.graph import edge_vectors
from mlip_datasets.record import MIN_CELL_VOLUME

from ..nn.embedding import ChargeSpinEmbedding, ElementTable
from ..nn.readout import AtomicReference, ScaleShift
from .config import ModelConfig
from .hooks import TrainingHooks

__all__ = ["Potential"]


class Potential(nn.Module):
    """Base class of every model: subclasses implement :meth:`interaction_energies`.

    Args:
        config: the resolved config of the family (a :class:`ModelConfig` subclass); kept as ``self.config``
            (``config.to_dict()`` goes into checkpoints, ``build_model(that_dict)`` rebuilds the architecture).

    Attributes set by :func:`~mlip_cli.models.registry.register_model` on each family's class: ``family``,
    ``config_class`` and ``exactly_equivariant``.
    """

    family: str
    config_class: type[ModelConfig]
    exactly_equivariant: bool
    #: True for a family whose :meth:`interaction_energies` needs to know which structure each atom belongs to
    #: (keywords ``node_graph``, ``num_graphs``); :meth:`forward` passes them only to such families.
    takes_node_graph: bool = False
    #: True for a family whose :meth:`interaction_energies` can record per-atom outputs its training hooks reuse
    #: (keyword ``record``, a dict it fills); :meth:`forward` passes one in training and returns its items.
    records_outputs: bool = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.element_table = ElementTable(config.elements)
        self.scale_shift = ScaleShift(config.scale, config.shift)
        self.reference = AtomicReference(config.elements, config.e0s)
        self.charge_spin = ChargeSpinEmbedding(config.channels) if config.charge_spin else None

    @property
    def dtype(self) -> torch.dtype:
        return self.scale_shift.scale.dtype

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    def training_hooks(self) -> TrainingHooks:
        """What this model adds to training beyond the data loss (none by default)."""
        return TrainingHooks()

    def interaction_energies(
        self,
        species: torch.Tensor,
        vectors: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        num_atoms: int,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-atom interaction energies before scale/shift.

        ``condition`` (models with ``charge_spin``): a vector per atom from its structure's charge and spin
        (:meth:`node_condition`), added to the initial scalar features. It is passed only to models with
        ``charge_spin``, so a family that does not support them may leave the keyword out.

        ``node_graph`` ``[N]`` (the structure of each atom) and ``num_graphs`` are passed only to a family that
        sets :attr:`takes_node_graph` (one that computes something per structure, such as frames).

        Shapes:
            species ``[N]``, vectors ``[E, 3]`` (``pos[dst] - pos[src] + shifts @ cell``), src ``[E]``,
            dst ``[E]``, condition ``[N, channels]`` -> ``[N]``.
        """
        raise NotImplementedError

    def node_condition(self, batch) -> torch.Tensor | None:
        """Each atom's charge/spin vector (``[N, channels]``), or None for a model without ``charge_spin``."""
        if self.charge_spin is None:
            return None
        per_structure = self.charge_spin(batch.charge, batch.spin, batch.charge_mask, batch.spin_mask)
        return per_structure.index_select(0, batch.batch)

    def set_statistics(self, e0s=None, scale: float | None = None, shift: float | None = None) -> None:
        """Set the energy constants from data statistics (and record them in ``self.config``).

        Args:
            e0s: ``{Z: E0}`` per-element references (e.g. ``DatasetStats.e0s``); replaces all of them.
            scale, shift: per-atom interaction-energy scale and shift (e.g. a force RMS and a mean).
        """
        if e0s is not None:
            self.reference.set(e0s)
            self.config.e0s = {z: v for z, v in self.reference.as_dict().items() if v != 0.0}
        self.scale_shift.set(scale, shift)
        if scale is not None:
            self.config.scale = float(scale)
        if shift is not None:
            self.config.shift = float(shift)

    def forward(
        self, batch, compute_forces: bool = True, compute_stress: bool = False, create_graph: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Energies (and forces, stress) of a batch of structures.

        Args:
            batch: a :class:`mlip_datasets.graph.Batch` (or any object with its ``numbers, positions, cell,
                pbc, edge_index, shifts, batch, natoms``). Floating-point inputs are cast to the model dtype.
            compute_forces: also return forces ``-dE/dpositions``.
            compute_stress: also return the stress (periodic structures; zeros for the others).
            create_graph: keep the graph of the derivatives so a loss on forces/stress can be backpropagated;
                default: ``self.training``. Works under ``torch.no_grad()`` (gradients are enabled inside).

        Returns:
            ``energy [B]`` and ``node_energy [N]`` (float64 for every model dtype) and, when asked,
            ``forces [N, 3]``, ``stress [B, 3, 3]`` (eV/A^3) in the model dtype.
            Without ``create_graph`` the returned tensors are detached whenever derivatives were taken.

        Shapes:
            positions ``[N, 3]``, cell ``[B, 3, 3]``, edge_index ``[2, E]``, shifts ``[E, 3]``, batch ``[N]``.
        """
        if create_graph is None:
            create_graph = self.training
        need_grad = compute_forces or compute_stress
        dtype = self.dtype
        num_graphs = int(batch.natoms.shape[0])
        positions = batch.positions.to(dtype)
        cell = batch.cell.to(dtype).reshape(num_graphs, 3, 3)
        shifts = batch.shifts.to(dtype)
        node_graph = batch.batch
        src, dst = batch.edge_index[0], batch.edge_index[1]

        with torch.set_grad_enabled(need_grad or torch.is_grad_enabled()):
            if need_grad and not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
            inputs = [positions]
            pos, cell_s = positions, cell
            if compute_stress:
                eps = torch.zeros(num_graphs, 3, 3, dtype=dtype, device=positions.device, requires_grad=True)
                inputs.append(eps)
                sym = 0.5 * (eps + eps.transpose(1, 2))
                pos = positions + torch.einsum("ni,nij->nj", positions, sym[node_graph])
                cell_s = cell + torch.bmm(cell, sym)

            species = self.element_table(batch.numbers)
            vectors = edge_vectors(pos, cell_s, shifts, batch.edge_index, node_graph)
            condition = self.node_condition(batch)
            # a family without charge and spin need not take the keyword (new families start that simple)
            extra = {} if condition is None else {"condition": condition}
            if self.takes_node_graph:
                extra.update(node_graph=node_graph, num_graphs=num_graphs)
            record: dict[str, torch.Tensor] = {}
            if self.records_outputs and self.training:
                extra["record"] = record
            e_int = self.interaction_energies(species, vectors, src, dst, positions.shape[0], **extra)
            # Summed in float64: per-atom references of hundreds of eV would round a float32 total to ~1 meV.
            node_energy = self.scale_shift(e_int).double() + self.reference(species).double()
            energy = node_energy.new_zeros(num_graphs).index_add(0, node_graph, node_energy)

            derivatives: dict[str, torch.Tensor] = {}
            if need_grad:
                grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
                if compute_forces:
                    derivatives["forces"] = -grads[0] if grads[0] is not None else torch.zeros_like(positions)
                if compute_stress:
                    derivatives["stress"] = self._stress(grads[1], cell, batch.pbc)
                if not create_graph:  # the graph is gone; do not hand out tensors that look differentiable
                    energy, node_energy = energy.detach(), node_energy.detach()
        return {"energy": energy, "node_energy": node_energy, **derivatives, **record}

    @staticmethod
    def _stress(dE_deps: torch.Tensor | None, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
        if dE_deps is None:
            return torch.zeros_like(cell)
        volume = torch.linalg.det(cell).abs()
        periodic = pbc.reshape(-1, 3).any(dim=1).to(cell.device) & (volume > MIN_CELL_VOLUME)
        # Divide by 1 where there is no cell, then zero those: no NaN/inf, even in the gradient.
        safe = torch.where(periodic, volume, torch.ones_like(volume))
        return torch.where(periodic[:, None, None], dE_deps / safe[:, None, None], torch.zeros_like(dE_deps))
