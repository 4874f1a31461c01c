"""Learned equivariance as TransIP's paper builds it: a transformation network and a contrastive objective.

Elhag et al., "Learning Inter-Atomic Potentials without Explicit Equivariance" (arXiv 2510.00027): instead of
declaring how embeddings transform (:mod:`mlip_cli.models.soft_equivariance`), a *learned transformation network*
``T(p, g)`` maps the pooled final embedding ``p`` of a structure ``x`` and a rotation ``g`` to a prediction of the
pooled embedding of ``g x``, and a contrastive (InfoNCE) objective makes the prediction pick out that structure
among all structures of the rotated batch. The model thereby discovers a representation of the rotations on its
latents instead of being given one. (Which embedding is aligned, pooled and final-layer only, is how the paper's
public reviews describe it; its method section was not available here.)

Pieces:

* :class:`LatentTransform`: ``T(p, g)``;
* :func:`contrastive_loss`: InfoNCE over rows (cosine similarity, temperature).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LatentTransform", "contrastive_loss"]


class LatentTransform(nn.Module):
    """``T(h, g) = W [h, h (x) vec(g)] + MLP([h, vec(g)])``: embeddings ``h``, moved by the group elements ``g``.

    The bilinear part can represent any linear action of O(3) built from degree-0 and degree-1 irreps of either
    parity (``D(g)`` is then linear in the entries of ``g``; the inversion ``-I`` flips exactly the odd parts), so
    a ``scalars + vectors`` representation is one solution it can find; the MLP (output initialised at zero) lets
    it learn a non-linear one. ``W`` starts as ``[I, 0]``: ``T(h, g) = h``.

    Shapes:
        h ``[N, width]``, g ``[N, 3, 3]`` (each row's group element) -> ``[N, width]``.
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


def contrastive_loss(predicted: torch.Tensor, target: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE: row ``i`` of ``predicted`` must be closer (cosine) to row ``i`` of ``target`` than to every other
    row; ``-mean_i log softmax_j(cos(p_i, t_j) / temperature)[i]``.

    Zero only in the limit of perfectly separated rows (and for a single row), so its value is no violation
    measure: about ``log N`` for unrelated embeddings, small for a transform that predicts ``target``.

    Shapes:
        predicted ``[N, D]``, target ``[N, D]`` -> scalar.
    """
    if predicted.shape != target.shape or predicted.dim() != 2:
        raise ValueError(f"contrastive_loss: shapes {tuple(predicted.shape)} and {tuple(target.shape)} differ")
    if not temperature > 0:
        raise ValueError(f"contrastive_loss: temperature must be > 0, got {temperature}")
    p = nn.functional.normalize(predicted, dim=1)
    t = nn.functional.normalize(target, dim=1)
    logits = p @ t.T / temperature  # [N, N]
    return nn.functional.cross_entropy(logits, torch.arange(len(p), device=p.device))
