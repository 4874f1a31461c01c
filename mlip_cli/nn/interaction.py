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

Scalar ends: a block may take only scalars in (``lmax_in=0``: the first block, whose input is the species
embedding) or give only scalars out (``lmax_out=0``: the last block, read out through its scalars). The
update is then the same formula restricted to the degrees that exist (missing input degrees are zero, unused
output degrees are not computed), so the model's energy is unchanged and those blocks skip work.
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
        lmax_in, lmax_out: degree of the input / output features: ``lmax`` (default) or 0 (module docstring).

    Shapes:
        x ``[N, C, d_in]``, species ``[N]``, Y ``[E, d]``, basis ``[E or U, num_radial]``, envelope ``[E or U]``,
        edge_rows ``[E]`` -> ``[N, C, d_out]`` (``d = (lmax+1)^2``, ``d_in``, ``d_out`` from ``lmax_in``,
        ``lmax_out``).
    """

    def __init__(
        self,
        channels: int,
        lmax: int,
        num_elements: int,
        tp: str,
        *,
        num_radial: int = 8,
        radial_hidden: int = 64,
        radial_layers: int = 2,
        avg_num_neighbors: float = 1.0,
        cp_rank: int | None = None,
        gaunt_grid: str = "auto",
        backend: str = "auto",
        lmax_in: int | None = None,
        lmax_out: int | None = None,
    ):
        super().__init__()
        lmax_in = lmax if lmax_in is None else lmax_in
        lmax_out = lmax if lmax_out is None else lmax_out
        self.lmax_in, self.lmax_out = lmax_in, lmax_out
        self.linear_in = EquivariantLinear(channels, channels, lmax_in)
        self.radial = RadialMLP(num_radial, radial_hidden, channels, radial_layers)
        self.conv = EdgeConvolution(
            tp, lmax, cp_rank=cp_rank, gaunt_grid=gaunt_grid, backend=backend, lmax_in=lmax_in, lmax_out=lmax_out
        )
        self.linear_out = EquivariantLinear(channels, channels, lmax_out)
        # Degrees present both in the input and in the output (the others get no self-connection).
        self.self_connection = ElementLinear(channels, channels, min(lmax_in, lmax_out), num_elements)
        self.gate = Gate(channels, lmax_out)
        self.message_norm = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(
        self,
        x: torch.Tensor,
        species: torch.Tensor,
        Y: torch.Tensor,
        basis: torch.Tensor,
        envelope: torch.Tensor,
        graph: MessageGraph,
        edge_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update the features; ``edge_rows [E]`` (optional) maps each edge to its row of ``basis`` and
        ``envelope`` when those are given once per reverse pair (:func:`~mlip_cli.nn.radial.reverse_pairs`)."""
        w = self.radial(basis, envelope) * self.message_norm  # [E or U, C]; the norm rides on the edge weights
        if edge_rows is not None:
            w = w.index_select(0, edge_rows)
        m = self.linear_out(self.conv(self.linear_in(x), Y, w, graph))
        d_out, d_min = m.shape[2], (min(self.lmax_in, self.lmax_out) + 1) ** 2
        skip = x if x.shape[2] == d_min else x[:, :, :d_min]
        sc = self.self_connection(skip, species)
        out = self.gate(m + sc if d_min == d_out else _add_front(m, sc))
        return out + skip if d_min == d_out else _add_front(out, skip)


def _add_front(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` with ``b`` added to its first ``b.shape[2]`` components. Shapes: a ``[N, C, d]``, b ``[N, C, d_b]``."""
    k = b.shape[2]
    return torch.cat([a[:, :, :k] + b, a[:, :, k:]], dim=2)
