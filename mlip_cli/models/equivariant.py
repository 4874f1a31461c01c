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

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlip_kernels.cp import EVEN_DEFAULT_RANKS
from mlip_kernels.scatter import MessageGraph
from mlip_kernels.sh import spherical_harmonics

from ..nn import BesselBasis, ElementEmbedding, InteractionBlock, PolynomialEnvelope, ScalarReadout
from ..nn.radial import reverse_pairs
from .config import ConfigError, ModelConfig
from .potential import Potential
from .registry import register_model

__all__ = [
    "EquivariantPotential",
    "TDNPotential",
    "GauntPotential",
    "CGPotential",
    "EquivariantConfig",
    "TDNConfig",
    "GauntConfig",
    "CGConfig",
    "MAX_LMAX",
    "MAX_PARAMETERS",
    "estimate_parameters_guard",
]

#: Largest ``lmax`` a config may ask for: the largest degree the kernels ship exact CP ranks for
#: (:data:`mlip_kernels.cp.EVEN_DEFAULT_RANKS`); the constants grow as ``L^6`` beyond it.
MAX_LMAX = max(EVEN_DEFAULT_RANKS)

#: Largest estimated parameter count a config may ask for (about 400 MB of float32 weights, before the
#: optimizer's and EMA's copies); checked before anything is built.
MAX_PARAMETERS = 100_000_000


def estimate_parameters_guard(estimate: int, keys: dict[str, Any]) -> None:
    """Refuse (one line naming the keys and the limit) a config whose estimated parameter count exceeds
    :data:`MAX_PARAMETERS`."""
    if estimate > MAX_PARAMETERS:
        named = ", ".join(f"{k}={v}" for k, v in keys.items())
        raise ConfigError(
            f"model config: {named} give about {estimate:.2g} parameters, above the limit of "
            f"{MAX_PARAMETERS:.0e}; lower them"
        )


@dataclass
class EquivariantConfig(ModelConfig):
    """The backbone's fields, shared by ``"tdn"``, ``"gaunt"`` and ``"cg"`` (not itself a family).

    Attributes:
        lmax: largest degree ``L`` of node features and edge harmonics.
        avg_num_neighbors: messages are divided by its square root (set from the data statistics).
        message_backend: rank-space kernel backend (``"auto"``, ``"torch"``, ``"compile"``, ``"triton"``,
            ``"naive"``); a runtime choice that never changes the numbers a checkpoint gives.
    """

    lmax: int = 2
    avg_num_neighbors: float = 1.0
    message_backend: str = "auto"

    def validate(self) -> None:
        super().validate()
        self._check_positive("avg_num_neighbors")
        if self.lmax < 0:
            raise ConfigError(f"model config: lmax must be >= 0, got {self.lmax}")
        if self.lmax > MAX_LMAX:
            raise ConfigError(f"model config: lmax must be <= {MAX_LMAX} (the largest shipped), got {self.lmax}")
        # Per block: the per-degree channel mixings and species self-connections (~ (L+1) C^2 (3 + species))
        # and the radial MLP; an overestimate of the real count by at most ~3x.
        c, h = self.channels, self.radial_hidden
        per_block = (self.lmax + 1) * c * c * (3 + self.num_elements) + h * (
            self.num_radial + h * self.radial_layers + 4 * c * (self.lmax + 1)
        )
        estimate_parameters_guard(
            self.num_interactions * per_block,
            {"channels": c, "lmax": self.lmax, "num_interactions": self.num_interactions, "radial_hidden": h},
        )

    def tp_options(self) -> dict[str, Any]:
        """Keyword arguments of the family's tensor product for :class:`~mlip_cli.nn.InteractionBlock`."""
        return {}


@dataclass
class TDNConfig(EquivariantConfig):
    """Config of ``"tdn"``.

    Attributes:
        cp_rank: CP rank of the even-path tensor. None picks the shipped exact rank of ``lmax``
            (:data:`mlip_kernels.cp.EVEN_DEFAULT_RANKS`) and writes it into the config, so a checkpoint keeps its
            rank when the shipped defaults improve. Ranks above the exact one are exact too; below it the product
            is approximate (a warning states the error). Only the middle blocks use it: it matters from 3
            interactions on.
    """

    cp_rank: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cp_rank is None and self.lmax in EVEN_DEFAULT_RANKS:
            self.cp_rank = EVEN_DEFAULT_RANKS[self.lmax]

    def validate(self) -> None:
        super().validate()
        if self.cp_rank is not None and self.cp_rank < 1:
            raise ConfigError(f"model config: cp_rank must be a positive integer or null, got {self.cp_rank}")

    def tp_options(self) -> dict[str, Any]:
        return {"cp_rank": self.cp_rank}


@dataclass
class GauntConfig(EquivariantConfig):
    """Config of ``"gaunt"``.

    Attributes:
        gaunt_grid: sphere quadrature: ``"auto"``, ``"lebedev"`` or ``"gl"``.
    """

    gaunt_grid: str = "auto"

    def tp_options(self) -> dict[str, Any]:
        return {"gaunt_grid": self.gaunt_grid}


@dataclass
class CGConfig(EquivariantConfig):
    """Config of ``"cg"`` (the dense CG product has no options of its own)."""


class EquivariantPotential(Potential):
    """The shared backbone; subclasses fix the edge tensor product (``tp``)."""

    tp: str = ""

    def __init__(self, config: EquivariantConfig):
        super().__init__(config)
        c = config
        self.lmax, self.channels = c.lmax, c.channels
        self.embedding = ElementEmbedding(c.num_elements, c.channels)
        self.basis = BesselBasis(c.cutoff, c.num_radial)
        self.envelope = PolynomialEnvelope(c.cutoff, c.envelope_p)
        last = c.num_interactions - 1
        # The first block sees only the embedding scalars, the last is read out only through its scalars.
        self.blocks = nn.ModuleList(
            InteractionBlock(
                c.channels,
                c.lmax,
                c.num_elements,
                self.tp,
                num_radial=c.num_radial,
                radial_hidden=c.radial_hidden,
                radial_layers=c.radial_layers,
                avg_num_neighbors=c.avg_num_neighbors,
                backend=c.message_backend,
                lmax_in=0 if i == 0 else c.lmax,
                lmax_out=0 if i == last else c.lmax,
                **c.tp_options(),
            )
            for i in range(c.num_interactions)
        )
        self.readout = ScalarReadout(c.channels, c.readout_hidden)

    @property
    def tp_rel_error(self) -> float:
        """Relative error of the TP factors against the exact tensor (0 for gaunt and cg)."""
        return max((b.conv.rel_error for b in self.blocks), default=0.0)

    def interaction_energies(
        self,
        species: torch.Tensor,
        vectors: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        num_atoms: int,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-atom interaction energies (``condition``: see :meth:`Potential.interaction_energies`).

        Shapes:
            species ``[N]``, vectors ``[E, 3]``, src ``[E]``, dst ``[E]``, condition ``[N, C]`` -> ``[N]``.
        """
        graph = MessageGraph(src, dst, num_atoms, num_atoms)  # built once, shared by every block
        Y = spherical_harmonics(vectors, self.lmax)
        # Radial functions once per reverse pair (i -> j and j -> i have the same |r|): half the radial MLPs.
        rep, edge_rows = reverse_pairs(src, dst, vectors, num_atoms)
        r = torch.linalg.vector_norm(vectors.index_select(0, rep), dim=-1)
        basis, envelope = self.basis(r), self.envelope(r)
        x = self.embedding(species)
        if condition is not None:
            x = x + condition
        x = x[:, :, None]  # [N, C, 1]: only scalars before the first block
        for block in self.blocks:
            x = block(x, species, Y, basis, envelope, graph, edge_rows)
        return self.readout(x[:, :, 0])


@register_model("tdn", config=TDNConfig, exactly_equivariant=True)
class TDNPotential(EquivariantPotential):
    """Backbone with the CP (TDN) low-rank tensor product, rank-space message passing."""

    tp = "tdn"


@register_model("gaunt", config=GauntConfig, exactly_equivariant=True)
class GauntPotential(EquivariantPotential):
    """Backbone with the exact Gaunt (sphere-grid) tensor product, rank-space message passing."""

    tp = "gaunt"


@register_model("cg", config=CGConfig, exactly_equivariant=True)
class CGPotential(EquivariantPotential):
    """Backbone with the exact dense CG tensor product per edge (the baseline)."""

    tp = "cg"
