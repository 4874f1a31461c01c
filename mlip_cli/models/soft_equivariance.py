"""Learned (soft) equivariance: declared irreps, the alignment loss, random batch transforms, frames.

A model that is not equivariant by construction (:class:`~mlip_cli.models.transip.TransIPPotential`) is trained
to be: for a random orthogonal ``g`` its embeddings must satisfy ``embed(g x) = D(g) embed(x)``, where the
embedding channels carry declared irreps (:class:`Irreps`) and ``D(g)`` is block-diagonal in real Wigner D
matrices (:func:`mlip_kernels.wigner.wigner_D`). For ``l = 1`` our real-harmonic basis is Cartesian order
``(x, y, z)`` and ``D_1(R) = R`` exactly, so vector channels are plain Cartesian vectors.

Pieces:

* :class:`Irreps`, :func:`rotate_embeddings`, :func:`alignment_loss`: the declared representation and the
  relative violation ``|embed(g x) - D(g) embed(x)|^2 / mean(|embed|^2)``;
* :func:`random_rotate_batch`, :func:`random_reflections`: random orthogonal maps per structure (rotation
  augmentation, mirrors), applied to a whole :class:`~mlip_datasets.graph.Batch` by
  :func:`~mlip_cli.models.symmetry.transform_batch`;
* :func:`safe_eigh`, :func:`pca_frames`, :data:`FRAME_SIGNS`: the frames of frame averaging.
"""

from __future__ import annotations

import dataclasses

import torch

from mlip_kernels.wigner import wigner_D

from .symmetry import ROTATION, draw, transform_batch

__all__ = [
    "Irreps",
    "rotate_embeddings",
    "alignment_loss",
    "random_rotate_batch",
    "random_reflections",
    "safe_eigh",
    "pca_frames",
    "FRAME_SIGNS",
]


# ----------------------------------------------------------------------------------------------- irreps
@dataclasses.dataclass(frozen=True)
class Irreps:
    """Declared irreps of embedding channels: blocks ``(mul, l, parity)`` laid out one after the other.

    A block of ``mul`` copies of degree ``l`` occupies ``mul * (2l+1)`` columns, channel-major
    (``[..., mul, 2l+1]`` flattened); ``parity`` is +1 (even) or -1 (odd). ``"16x0e+4x1o"`` is 16 scalars
    followed by 4 polar vectors.
    """

    blocks: tuple[tuple[int, int, int], ...]

    @property
    def dim(self) -> int:
        return sum(mul * (2 * l + 1) for mul, l, _ in self.blocks)

    def __add__(self, other: Irreps) -> Irreps:
        return Irreps(self.blocks + other.blocks)

    def __mul__(self, times: int) -> Irreps:
        return Irreps(self.blocks * times)

    def __str__(self) -> str:
        return "+".join(f"{mul}x{l}{'e' if p > 0 else 'o'}" for mul, l, p in self.blocks) or "0"


def rotate_embeddings(x: torch.Tensor, irreps: Irreps, R: torch.Tensor) -> torch.Tensor:
    """``D(R) x`` for embeddings with declared irreps; ``R`` may be improper (reflections).

    For an improper ``R`` the real Wigner D of degree ``l`` carries ``(-1)^l``; a block of parity ``p`` gets
    ``D_l(R) * ((-1)^l p)^[det R < 0]``, so ``0e`` scalars are unchanged and ``1o`` vectors map to ``R v``.

    Shapes:
        x ``[N, irreps.dim]``, R ``[3, 3]`` or ``[N, 3, 3]`` (one per row) -> ``[N, irreps.dim]``.
    """
    if x.shape[-1] != irreps.dim:
        raise ValueError(f"embeddings have {x.shape[-1]} columns but irreps {irreps} have dimension {irreps.dim}")
    R = R.to(x.dtype)
    if R.dim() == 2:
        R = R.expand(x.shape[0], 3, 3)
    improper = torch.linalg.det(R) < 0
    parts, start = [], 0
    for mul, l, p in irreps.blocks:
        d = 2 * l + 1
        block = x[:, start : start + mul * d].reshape(-1, mul, d)
        start += mul * d
        if l == 0:
            flip = torch.where(improper, -1.0, 1.0).to(x.dtype) if p < 0 else None
            parts.append(block * flip[:, None, None] if flip is not None else block)
            continue
        D = wigner_D(l, R)  # [N, d, d]
        if (-1) ** l != p:  # the block's parity differs from the harmonics' natural (-1)^l
            D = D * torch.where(improper, -1.0, 1.0).to(x.dtype)[:, None, None]
        parts.append(torch.einsum("nij,ncj->nci", D, block))
    return torch.cat([q.reshape(x.shape[0], -1) for q in parts], dim=1)


def alignment_loss(moved: torch.Tensor, expected: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Relative violation ``sum |a - b|^2 / (sum (|a - a_g|^2 + |b - b_g|^2) / 2)``, with ``a_g`` the mean of
    ``a`` over the rows of the same group (0: equivariant; about 2 or more: unrelated).

    Scale-free, so a target violation means the same for any model width or training stage. The groups are the
    atoms' elements: embeddings carry a large per-element offset that is trivially invariant, and measuring the
    violation against it would let a small relative violation hide a large error in the part that encodes
    geometry (a 2.5% rms violation by total norm left 3BPA forces 19% off under rotation). Without groups
    the whole norm is used.

    Shapes:
        moved ``[N, D]`` (``embed(g x)``), expected ``[N, D]`` (``D(g) embed(x)``), groups ``[N]`` int -> scalar.
    """
    num = (moved - expected).pow(2).sum()
    if groups is None:
        den = 0.5 * (moved.pow(2).sum() + expected.pow(2).sum())
    else:
        size = int(groups.max()) + 1 if groups.numel() else 0
        count = (
            torch.zeros(size, dtype=moved.dtype, device=moved.device)
            .index_add_(0, groups, torch.ones_like(groups, dtype=moved.dtype))
            .clamp(min=1)[:, None]
        )

        def spread(x):
            mean = torch.zeros(size, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, groups, x) / count
            return (x - mean.index_select(0, groups)).pow(2).sum()

        den = 0.5 * (spread(moved) + spread(expected))
    return num / (den + torch.finfo(moved.dtype).tiny)


# ----------------------------------------------------------------------------------- random transforms
def random_reflections(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """Mirrors through random planes: ``I - 2 u u^T`` with ``u`` uniform on the sphere. Shapes: -> ``[n, 3, 3]``."""
    u = torch.randn(n, 3, dtype=torch.float64, generator=generator)
    u = u / u.norm(dim=1, keepdim=True)
    return (torch.eye(3, dtype=torch.float64) - 2 * u[:, :, None] * u[:, None, :]).to(dtype)


def random_rotate_batch(batch, generator: torch.Generator | None = None, inversions: bool = False):
    """Rotation augmentation: each structure gets its own Haar-random rotation (moved by :func:`transform_batch`).

    Args:
        batch: a :class:`~mlip_datasets.graph.Batch`.
        generator: random source; None draws from torch's global RNG (so a resumed run replays it).
        inversions: also invert each structure with probability 1/2 (Haar-random over O(3)).
    """
    R = draw(ROTATION, batch.num_graphs, generator)
    if inversions:
        flip = torch.rand(batch.num_graphs, dtype=torch.float64, generator=generator) < 0.5
        R = torch.where(flip[:, None, None], -R, R)
    return transform_batch(batch, R)


# ---------------------------------------------------------------------------------------- frames
#: The 8 sign patterns of a principal frame's axes (proper and improper frames: O(3) averaging).
FRAME_SIGNS = torch.tensor(
    [[a, b, c] for a in (1.0, -1.0) for b in (1.0, -1.0) for c in (1.0, -1.0)], dtype=torch.float64
)


class _SafeEigh(torch.autograd.Function):
    """``torch.linalg.eigh`` whose backward stays finite at degenerate eigenvalues (twice differentiable)."""

    @staticmethod
    def forward(ctx, A):
        lam, U = torch.linalg.eigh(A)
        ctx.save_for_backward(lam, U)
        return lam, U

    @staticmethod
    def backward(ctx, g_lam, g_U):
        lam, U = ctx.saved_tensors
        # Standard eigh adjoint with 1/(l_j - l_i) replaced by d / (d^2 + eps^2): identical for gaps >> eps.
        d = lam[..., None, :] - lam[..., :, None]
        eps = (torch.finfo(lam.dtype).eps ** 0.5) * (lam.abs().amax(-1, keepdim=True)[..., None] + 1e-30)
        F = d / (d * d + eps * eps)
        inner = torch.diag_embed(g_lam) + F * (U.transpose(-1, -2) @ g_U)
        g_A = U @ inner @ U.transpose(-1, -2)
        return 0.5 * (g_A + g_A.transpose(-1, -2))


def safe_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of symmetric ``A``; gradients finite when degenerate.

    Shapes:
        A ``[..., n, n]`` -> ``[..., n]``, ``[..., n, n]``.
    """
    return _SafeEigh.apply(A)


def pca_frames(vectors: torch.Tensor, weights: torch.Tensor, edge_graph: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Principal axes per structure of the weighted edge-vector covariance ``C_b = sum_e w_e r_e r_e^T``.

    Edge vectors (not positions) make the frame translation-invariant and independent of how atoms are
    wrapped into a periodic cell; weighting by the cutoff envelope keeps it continuous when edges cross the
    cutoff. ``C_b`` rotates as ``R C R^T``, so the frame rotates with the structure up to the sign of each
    axis, which frame averaging enumerates (:data:`FRAME_SIGNS`). Degenerate ``C_b`` (high-symmetry
    structures) leaves the axes ambiguous: invariance is then not exact.

    Shapes:
        vectors ``[E, 3]``, weights ``[E]``, edge_graph ``[E]`` (structure of each edge) -> ``[B, 3, 3]``
        (columns: axes, ascending variance).
    """
    outer = (weights[:, None, None] * vectors[:, :, None] * vectors[:, None, :]).reshape(-1, 9)
    C = outer.new_zeros(num_graphs, 9).index_add(0, edge_graph, outer).reshape(num_graphs, 3, 3)
    return safe_eigh(C)[1]
