"""Learned equivariance as TransIP's paper builds it: a transformation network and a contrastive objective.

Elhag et al., "Learning Inter-Atomic Potentials without Explicit Equivariance" (arXiv 2510.00027): instead of
declaring how token embeddings transform (:mod:`mlip_cli.models.soft_equivariance`), a *learned transformation
network* ``T(h, g)`` maps the embedding ``h`` of an atom in ``x`` and a group element ``g`` to a prediction of
the embedding of the same atom in ``g x``, and a contrastive (InfoNCE) objective makes the prediction pick out
that atom among all atoms of the transformed batch. The model thereby discovers a representation of O(3) on its
latents instead of being given one.

Pieces:

* :class:`LatentTransform`: ``T(h, g)`` for one layer's embeddings;
* :func:`contrastive_loss`: InfoNCE over atoms (cosine similarity, temperature);
* :func:`force_violation`: the relative violation ``|F(g x) - g F(x)|^2`` of the forces, which the embedding
  losses do not control (they constrain values, not derivatives with respect to positions).
"""

from __future__ import annotations

import torch
from torch import nn

from .soft_equivariance import alignment_loss

__all__ = ["LatentTransform", "contrastive_loss", "force_violation"]


class LatentTransform(nn.Module):
    """``T(h, g) = W [h, h (x) vec(g)] + MLP([h, vec(g)])``: one layer's token embeddings, moved by ``g``.

    The bilinear part can represent any linear action of O(3) built from degree-0 and degree-1 irreps of either
    parity (``D(g)`` is then linear in the entries of ``g``; the inversion ``-I`` flips exactly the odd parts), so
    the declared ``scalars + vectors`` representation of the alignment loss is one solution it can find; the MLP
    (output initialised at zero) lets it learn a non-linear one. ``W`` starts as ``[I, 0]``: ``T(h, g) = h``.

    Shapes:
        h ``[N, width]``, g ``[N, 3, 3]`` (each atom's group element) -> ``[N, width]``.
    """

    def __init__(self, width: int, hidden: int | None = None):
        super().__init__()
        self.width = width
        self.bilinear = nn.Linear(10 * width, width)
        hidden = hidden or width
        self.mlp = nn.Sequential(nn.Linear(width + 9, hidden), nn.SiLU(), nn.Linear(hidden, width))
        with torch.no_grad():
            self.bilinear.weight.zero_()
            self.bilinear.weight[:, :width].copy_(torch.eye(width))
            self.bilinear.bias.zero_()
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()

    def forward(self, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.width or g.shape != (h.shape[0], 3, 3):
            raise ValueError(f"LatentTransform({self.width}): got h {tuple(h.shape)} and g {tuple(g.shape)}")
        gv = g.reshape(-1, 9).to(h.dtype)
        pairs = (h[:, :, None] * gv[:, None, :]).reshape(h.shape[0], 9 * self.width)
        return self.bilinear(torch.cat([h, pairs], dim=1)) + self.mlp(torch.cat([h, gv], dim=1))


def contrastive_loss(
    predicted: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 0.1,
    max_anchors: int | None = 512,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """InfoNCE over atoms: row ``i`` of ``predicted`` must be closer (cosine) to row ``i`` of ``target`` than to
    every other row; ``-mean_i log softmax_j(cos(p_i, t_j) / temperature)[i]``.

    Zero only in the limit of perfectly separated atoms, so its value is no violation measure: about
    ``log N`` for unrelated embeddings, small for a transform that predicts ``target``. ``max_anchors`` bounds
    the cost to ``max_anchors x N`` similarities: that many rows are drawn as anchors (torch's global RNG unless
    ``generator``), every row of ``target`` stays a candidate.

    Shapes:
        predicted ``[N, D]``, target ``[N, D]`` -> scalar.
    """
    if predicted.shape != target.shape or predicted.dim() != 2:
        raise ValueError(f"contrastive_loss: shapes {tuple(predicted.shape)} and {tuple(target.shape)} differ")
    if not temperature > 0:
        raise ValueError(f"contrastive_loss: temperature must be > 0, got {temperature}")
    n = predicted.shape[0]
    anchors = torch.arange(n, device=predicted.device)
    if max_anchors is not None and n > max_anchors:
        anchors = torch.randperm(n, generator=generator)[:max_anchors].to(predicted.device)
    p = nn.functional.normalize(predicted.index_select(0, anchors), dim=1)
    t = nn.functional.normalize(target, dim=1)
    logits = p @ t.T / temperature  # [A, N]
    return nn.functional.cross_entropy(logits, anchors)


def force_violation(moved_forces: torch.Tensor, forces: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Relative violation ``sum |F(g x) - g F(x)|^2 / (sum |F(g x)|^2 + |F(x)|^2) / 2`` (0: equivariant forces).

    Shapes:
        moved_forces ``[N, 3]`` (forces of ``g x``), forces ``[N, 3]`` (of ``x``), g ``[N, 3, 3]`` -> scalar.
    """
    expected = torch.einsum("nij,nj->ni", g.to(forces.dtype), forces)
    return alignment_loss(moved_forces, expected)
