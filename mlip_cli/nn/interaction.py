"""NequIP-like interaction block with a pluggable edge tensor product.

Where the weights act (the reason the rank-space fast path applies to every kind):

* ``linear_in`` and ``linear_out``: per-degree channel mixing (:class:`EquivariantLinear`), applied per
  *node*, on the TP input before the convolution and on its output after the scatter. They commute with the
  rank-space projections (they act on the channel axis, the projections on the irreps axis).
* ``radial``: the only per-edge weights, ``w_e [E, C]`` (one per edge and channel), shared by all paths of
  the product (path-weight sharing), so they multiply in rank space.
* ``self_connection``: species-dependent per-degree mixing of the block input, per node.
* ``gate``: SiLU on scalars, sigmoid gates from the scalars on degrees ``l > 0``.

Update::

    m = linear_out( sum_{e: dst_e = n} w_e * TP(linear_in(x)[src_e], Y(r_e)) ) / sqrt(avg_num_neighbors)
    x <- x + gate( m + self_connection(x, species) )
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlip_kernels.scatter import MessageGraph

from .conv import EdgeConvolution
from .equivariant import ElementLinear, EquivariantLinear, Gate
from .radial import RadialMLP

__all__ = ["InteractionBlock"]


class InteractionBlock(nn.Module):
    """One message-passing update of features ``[N, C, (L+1)^2]`` (module docstring).

    Args:
        channels: ``C``.
        lmax: ``L``.
        num_elements: number of species (for the self-connection).
        tp: ``"tdn"``, ``"gaunt"`` or ``"cg"``.
        num_radial, radial_hidden, radial_layers: radial MLP sizes.
        avg_num_neighbors: messages are divided by its square root (the sum of ``K`` roughly independent
            unit messages has size ``sqrt(K)``).
        cp_rank, gaunt_grid, backend: see :class:`~mlip_cli.nn.conv.EdgeConvolution`.

    Shapes:
        x ``[N, C, d]``, species ``[N]``, Y ``[E, d]``, basis ``[E, num_radial]``, envelope ``[E]``
        -> ``[N, C, d]``.
    """

    def __init__(self, channels: int, lmax: int, num_elements: int, tp: str, *, num_radial: int = 8,
                 radial_hidden: int = 64, radial_layers: int = 2, avg_num_neighbors: float = 1.0,
                 cp_rank: int | None = None, gaunt_grid: str = "auto", backend: str = "auto"):
        super().__init__()
        self.linear_in = EquivariantLinear(channels, channels, lmax)
        self.radial = RadialMLP(num_radial, radial_hidden, channels, radial_layers)
        self.conv = EdgeConvolution(tp, lmax, cp_rank=cp_rank, gaunt_grid=gaunt_grid, backend=backend)
        self.linear_out = EquivariantLinear(channels, channels, lmax)
        self.self_connection = ElementLinear(channels, channels, lmax, num_elements)
        self.gate = Gate(channels, lmax)
        self.message_norm = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(self, x: torch.Tensor, species: torch.Tensor, Y: torch.Tensor, basis: torch.Tensor,
                envelope: torch.Tensor, graph: MessageGraph) -> torch.Tensor:
        w = self.radial(basis, envelope) * self.message_norm  # [E, C]; the norm rides on the cheap edge weights
        m = self.linear_out(self.conv(self.linear_in(x), Y, w, graph))
        return x + self.gate(m + self.self_connection(x, species))
