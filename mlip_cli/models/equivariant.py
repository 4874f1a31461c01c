"""The equivariant message-passing backbone and its three families ``"tdn"``, ``"gaunt"``, ``"cg"``.

One backbone (NequIP-like), differing only in the edge tensor product (:class:`mlip_cli.nn.EdgeConvolution`):

1. initial features ``x [N, C, 1]``: a learned embedding of the species (scalars; higher degrees are zero);
2. per edge: harmonics ``Y(r_e)`` up to ``L``; per pair of reverse edges (same ``|r_e|``,
   :func:`~mlip_cli.nn.radial.reverse_pairs`): a Bessel basis of ``|r_e|``, the polynomial envelope and
   each block's radial weights, gathered back to the edges;
3. ``num_interactions`` :class:`~mlip_cli.nn.InteractionBlock` updates (residual) of features
   ``[N, C, (L+1)^2]``; the first takes only the scalars in and the last gives only the scalars out (the
   readout uses nothing else), which is exact and skips the zero and unused degrees;
4. per-atom interaction energy from the final ``l = 0`` channels (:class:`~mlip_cli.nn.ScalarReadout`).

Where the weights act: per-degree channel mixing before and after the convolution, per node; one radial
weight per edge and channel shared by all paths of the product (so it multiplies in rank space); a
species-dependent per-degree self-connection, per node; gates computed from scalars. See
:mod:`mlip_cli.nn.interaction`.

Symmetry: energies are invariant under rotations, inversion (so mirror images), translations and atom
permutations; ``"tdn"`` to the CP fit error (``model.tp_rel_error``: ~1e-14 with the default ranks), the
others to rounding. Every family keeps only the parity-even paths ``l1 + l2 + l3`` even of its tensor
product (see :mod:`mlip_cli.nn.conv`): features and harmonics have the natural parity ``(-1)^l``, so all
features stay true tensors and the readout sees true scalars at any depth. (The odd paths, e.g. the cross
product, would put pseudotensors into the same channels; from the third interaction on they reach the
scalars and mirror images get different energies. With two interactions they cannot reach the energy at
all, so dropping them changes nothing there but the cost.)

Messages go from ``edge_index[0]`` (sender) to ``edge_index[1]`` (receiver) with ``r_e = pos[1] - pos[0]``
(+ shifts @ cell); neighbour lists are symmetric, so every pair passes messages both ways.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip_kernels.scatter import MessageGraph
from mlip_kernels.sh import spherical_harmonics

from ..nn import BesselBasis, ElementEmbedding, InteractionBlock, PolynomialEnvelope, ScalarReadout
from ..nn.radial import reverse_pairs
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
        last = c.num_interactions - 1
        # The first block sees only the embedding scalars, the last is read out only through its scalars.
        self.blocks = nn.ModuleList(
            InteractionBlock(c.channels, c.lmax, c.num_elements, self.tp, num_radial=c.num_radial,
                             radial_hidden=c.radial_hidden, radial_layers=c.radial_layers,
                             avg_num_neighbors=c.avg_num_neighbors, cp_rank=c.cp_rank, gaunt_grid=c.gaunt_grid,
                             backend=c.message_backend, lmax_in=0 if i == 0 else c.lmax,
                             lmax_out=0 if i == last else c.lmax)
            for i in range(c.num_interactions)
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
        Y = spherical_harmonics(vectors, self.lmax)
        # Radial functions once per reverse pair (i -> j and j -> i have the same |r|): half the radial MLPs.
        rep, edge_rows = reverse_pairs(src, dst, vectors, num_atoms)
        r = torch.linalg.vector_norm(vectors.index_select(0, rep), dim=-1)
        basis, envelope = self.basis(r), self.envelope(r)
        x = self.embedding(species)[:, :, None]  # [N, C, 1]: only scalars before the first block
        for block in self.blocks:
            x = block(x, species, Y, basis, envelope, graph, edge_rows)
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
