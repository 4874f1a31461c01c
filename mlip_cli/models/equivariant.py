"""The equivariant message-passing backbone and its three families ``"tdn"``, ``"gaunt"``, ``"cg"``.

One backbone (NequIP-like), differing only in the edge tensor product (:class:`mlip_cli.nn.EdgeConvolution`):

1. initial features ``x [N, C, (L+1)^2]``: a learned embedding of the species in ``l = 0``, zeros elsewhere;
2. per edge: harmonics ``Y(r_e)`` up to ``L``, a Bessel basis of ``|r_e|`` and the polynomial envelope;
3. ``num_interactions`` :class:`~mlip_cli.nn.InteractionBlock` updates (residual);
4. per-atom interaction energy from the final ``l = 0`` channels (:class:`~mlip_cli.nn.ScalarReadout`).

Where the weights act: per-degree channel mixing before and after the convolution, per node; one radial
weight per edge and channel shared by all paths of the product (so it multiplies in rank space); a
species-dependent per-degree self-connection, per node; gates computed from scalars. See
:mod:`mlip_cli.nn.interaction`.

Symmetry: energies are invariant under rotations, translations and atom permutations; ``"tdn"`` to the CP
fit error (``model.tp_rel_error``: ~1e-13 at L <= 2 with the default ranks), the others to rounding.
Parity: ``"gaunt"`` keeps only even paths, so its energy is also invariant under inversion. ``"tdn"``
and ``"cg"`` include the parity-odd paths (cross product) of the shared CG tensor in the same channels: with
``num_interactions <= 2`` the readout still sees only true scalars; with 3 or more it can see pseudoscalars,
so those energies are SO(3)- but not O(3)-invariant (mirror images may differ).

Messages go from ``edge_index[0]`` (sender) to ``edge_index[1]`` (receiver) with ``r_e = pos[1] - pos[0]``
(+ shifts @ cell); neighbour lists are symmetric, so every pair passes messages both ways.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_kernels.scatter import MessageGraph
from mlip_kernels.sh import spherical_harmonics

from ..nn import BesselBasis, ElementEmbedding, InteractionBlock, PolynomialEnvelope, ScalarReadout
from .config import ModelConfig
from .potential import Potential
from .registry import register_model

__all__ = ["EquivariantPotential", "TDNPotential", "GauntPotential", "CGPotential"]


class EquivariantPotential(Potential):
    """The shared backbone; subclasses fix the edge tensor product (``tp``)."""

    tp: str = ""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.lmax, self.channels = c.lmax, c.channels
        self.embedding = ElementEmbedding(c.num_elements, c.channels)
        self.basis = BesselBasis(c.cutoff, c.num_radial)
        self.envelope = PolynomialEnvelope(c.cutoff, c.envelope_p)
        self.blocks = nn.ModuleList(
            InteractionBlock(c.channels, c.lmax, c.num_elements, self.tp, num_radial=c.num_radial,
                             radial_hidden=c.radial_hidden, radial_layers=c.radial_layers,
                             avg_num_neighbors=c.avg_num_neighbors, cp_rank=c.cp_rank, gaunt_grid=c.gaunt_grid,
                             backend=c.message_backend)
            for _ in range(c.num_interactions)
        )
        self.readout = ScalarReadout(c.channels, c.readout_hidden)

    @property
    def tp_rel_error(self) -> float:
        """Relative error of the TP factors against the exact tensor (0 for gaunt and cg)."""
        return max((b.conv.rel_error for b in self.blocks), default=0.0)

    def interaction_energies(self, species: torch.Tensor, vectors: torch.Tensor, src: torch.Tensor,
                             dst: torch.Tensor, num_atoms: int) -> torch.Tensor:
        """Per-atom interaction energies.

        Shapes:
            species ``[N]``, vectors ``[E, 3]``, src ``[E]``, dst ``[E]`` -> ``[N]``.
        """
        graph = MessageGraph(src, dst, num_atoms, num_atoms)  # built once, shared by every block
        r = torch.linalg.vector_norm(vectors, dim=-1)
        Y = spherical_harmonics(vectors, self.lmax)
        basis, envelope = self.basis(r), self.envelope(r)
        h0 = self.embedding(species)
        x = torch.cat([h0[:, :, None], h0.new_zeros(num_atoms, self.channels, (self.lmax + 1) ** 2 - 1)], dim=2)
        for block in self.blocks:
            x = block(x, species, Y, basis, envelope, graph)
        return self.readout(x[:, :, 0])


@register_model("tdn")
class TDNPotential(EquivariantPotential):
    """Backbone with the CP (TDN) low-rank tensor product, rank-space message passing."""

    tp = "tdn"


@register_model("gaunt")
class GauntPotential(EquivariantPotential):
    """Backbone with the exact Gaunt (sphere-grid) tensor product, rank-space message passing."""

    tp = "gaunt"


@register_model("cg")
class CGPotential(EquivariantPotential):
    """Backbone with the exact dense CG tensor product per edge (the baseline)."""

    tp = "cg"
