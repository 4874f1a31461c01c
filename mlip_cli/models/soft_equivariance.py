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
* :func:`safe_eigh`, :func:`edge_covariance`, :data:`FRAME_SIGNS`, :func:`averaging_frames`: the frames of frame
  averaging (principal axes, and frames from the edges where the axes are degenerate).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

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
    "edge_covariance",
    "FRAME_SIGNS",
    "degeneracy_tolerance",
    "AveragingFrames",
    "averaging_frames",
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


def edge_covariance(
    vectors: torch.Tensor, weights: torch.Tensor, edge_graph: torch.Tensor, num_graphs: int
) -> torch.Tensor:
    """Weighted edge-vector covariance per structure, ``C_b = sum_e w_e r_e r_e^T``.

    Edge vectors (not positions) make it translation-invariant and independent of how atoms are wrapped into a
    periodic cell; weighting by the cutoff envelope keeps it continuous when edges cross the cutoff. ``C_b``
    rotates as ``R C R^T``, so its principal axes rotate with the structure up to the sign of each axis, which
    frame averaging enumerates (:data:`FRAME_SIGNS`).

    Shapes:
        vectors ``[E, 3]``, weights ``[E]``, edge_graph ``[E]`` (structure of each edge) -> ``[B, 3, 3]``.
    """
    outer = (weights[:, None, None] * vectors[:, :, None] * vectors[:, None, :]).reshape(-1, 9)
    return outer.new_zeros(num_graphs, 9).index_add(0, edge_graph, outer).reshape(num_graphs, 3, 3)


def degeneracy_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for equal eigenvalues, equal edge lengths and equal directions: ``sqrt(eps)``
    (1.5e-8 in float64, 3.5e-4 in float32), far above the rounding of a rotated structure, far below the
    differences between physically distinct values."""
    return torch.finfo(dtype).eps ** 0.5


class AveragingFrames(NamedTuple):
    """The frames of frame averaging (:func:`averaging_frames`).

    ``axes[b] * FRAME_SIGNS[k]`` (columns scaled) are the 8 frames of structure ``b``, except for the
    structures in ``degenerate``, which map to their own frames ``[K_b, 3, 3]`` (columns: axes).
    """

    axes: torch.Tensor  # [B, 3, 3]
    degenerate: dict[int, torch.Tensor]


def averaging_frames(
    vectors: torch.Tensor,
    weights: torch.Tensor,
    edge_graph: torch.Tensor,
    num_graphs: int,
    resolve_degenerate: bool = True,
) -> AveragingFrames:
    """Per structure, a finite set of frames that moves with it: ``frames(g x) = g frames(x)`` for ``g`` in O(3).

    Averaging any function of the coordinates in these frames over the set is then exactly O(3)-invariant. A
    structure whose covariance (:func:`edge_covariance`) has three distinct eigenvalues gets its principal axes
    with the 8 sign choices (:data:`FRAME_SIGNS`). When eigenvalues coincide (relative gap below
    :func:`degeneracy_tolerance`: symmetric tops such as benzene, cubic ones such as CH4, SF6 and cubic
    crystals) the axes inside the degenerate subspace are arbitrary, and frames are built from the structure's
    own edges instead, chosen by invariant rules (lengths, angles) with every tie kept, so the set is
    equivariant and the structure's own symmetries map it onto itself. (No fewer frames can be exact: the set
    must hold whole orbits of the point group, 24 frames for CH4 and benzene, 48 for SF6 and a cubic crystal;
    these rules give 48, 24, 48 and 96 for fcc.)

    * two equal eigenvalues: the distinct axis ``u`` (both signs, in its principal column) and, in the plane,
      the directions of the shortest edges with a component off the axis, projected into the plane (distinct
      directions once each); frames ``[a, +-(u x a), +-u]``. With no edge off the axis (a linear molecule)
      every in-plane choice gives the same coordinates and the principal axes are kept.
    * three equal eigenvalues: ``a`` = each distinct direction of the shortest edges; ``b`` = the distinct
      directions among them (or, when all are parallel to ``a``, among the shortest edges that are not)
      closest in angle to ``a`` without being parallel; frames ``[a, b_perp, +-(a x b_perp)]`` with ``b_perp``
      the normalised component of ``b`` orthogonal to ``a``.

    Everything is a smooth function of the edge vectors (``u`` comes from :func:`safe_eigh` with its gap to the
    others), so forces and stress by autograd stay finite. The choice switches at the tolerance: a structure
    whose eigenvalues are close but not within it keeps its principal axes, which are exact but turn quickly
    with the geometry; the energy is discontinuous (by the network's own lack of invariance) where a structure
    crosses the tolerance or the tie between its shortest edges changes. ``resolve_degenerate=False`` keeps the
    principal axes everywhere (no data-dependent branching, for symbolic tracing).

    Shapes:
        vectors ``[E, 3]``, weights ``[E]`` (edges with weight 0 are ignored), edge_graph ``[E]`` -> axes
        ``[B, 3, 3]``, degenerate ``{b: [K_b, 3, 3]}``.
    """
    lam, axes = safe_eigh(edge_covariance(vectors, weights, edge_graph, num_graphs))
    degenerate: dict[int, torch.Tensor] = {}
    if not resolve_degenerate or num_graphs == 0:
        return AveragingFrames(axes, degenerate)
    tol = degeneracy_tolerance(vectors.dtype)
    values = lam.detach()
    scale = values[:, 2].clamp(min=torch.finfo(values.dtype).tiny)
    equal = (values[:, 1:] - values[:, :-1]) / scale[:, None] < tol  # [B, 2]: lam0 = lam1, lam1 = lam2
    equal &= (values[:, 2] > 0)[:, None]  # no live edge: the coordinates are all 0 in any frame
    for b in torch.nonzero(equal.any(dim=1)).flatten().tolist():
        live = (edge_graph == b) & (weights > 0)
        frames = _frames_from_edges(vectors[live], axes[b], bool(equal[b, 0]), bool(equal[b, 1]), tol)
        if frames is not None:
            degenerate[b] = frames
    return AveragingFrames(axes, degenerate)


def _first_of_each_direction(directions: torch.Tensor, tol: float) -> torch.Tensor:
    """The unit vectors not within ``tol`` (in ``1 - cos``) of an earlier one. Shapes: ``[K, 3]`` -> ``[M, 3]``."""
    d = directions.detach()
    repeats = torch.tril(d @ d.T > 1 - tol, diagonal=-1).any(dim=1)
    return directions[~repeats]


def _shortest(lengths: torch.Tensor, tol: float) -> torch.Tensor:
    """Mask of the lengths within relative ``tol`` of the shortest. Shapes: ``[K]`` -> ``[K]`` bool."""
    d = lengths.detach()
    return d <= d.min() * (1 + tol)


def _frames_from_edges(r, axes, low_pair: bool, high_pair: bool, tol: float) -> torch.Tensor | None:
    """Frames of one structure with degenerate covariance (:func:`averaging_frames`), or None to keep its axes.

    Shapes:
        r ``[E_b, 3]`` (live edges), axes ``[3, 3]`` -> ``[K, 3, 3]`` (columns: axes).
    """
    lengths = torch.linalg.vector_norm(r, dim=1)
    signs = (1.0, -1.0)
    if not (low_pair and high_pair):  # a symmetric top: one distinct axis
        column = 2 if low_pair else 0
        u = axes[:, column]
        planar = r - (r @ u)[:, None] * u
        planar_length = torch.linalg.vector_norm(planar, dim=1)
        off_axis = planar_length.detach() > tol * lengths.detach()
        if not off_axis.any():
            return None
        anchors = planar[off_axis] / planar_length[off_axis, None]
        a = _first_of_each_direction(anchors[_shortest(lengths[off_axis], tol)], tol)
        b = torch.linalg.cross(u.expand_as(a), a, dim=1)
        frames = []
        for s1 in signs:
            for s2 in signs:
                axis, across = s2 * u.expand_as(a), s1 * b
                frames.append(torch.stack([a, across, axis] if column == 2 else [axis, a, across], dim=-1))
        return torch.cat(frames)
    # isotropic: frames from pairs of edge directions
    directions = r / lengths[:, None]
    nearest = _first_of_each_direction(directions[_shortest(lengths, tol)], tol)
    frames = []
    for a in nearest:
        pool = nearest[(nearest.detach() @ a.detach()).abs() < 1 - tol]
        if pool.shape[0] == 0:  # every shortest edge is parallel to a: the shortest of the others
            apart = (directions.detach() @ a.detach()).abs() < 1 - tol
            if not apart.any():
                continue
            pool = _first_of_each_direction(directions[apart][_shortest(lengths[apart], tol)], tol)
        cos = pool.detach() @ a.detach()
        b = pool[cos >= cos.max() - tol]
        b_perp = b - (b @ a)[:, None] * a
        b_perp = b_perp / torch.linalg.vector_norm(b_perp, dim=1, keepdim=True)
        c = torch.linalg.cross(a.expand_as(b_perp), b_perp, dim=1)
        for s in signs:
            frames.append(torch.stack([a.expand_as(b_perp), b_perp, s * c], dim=-1))
    return torch.cat(frames) if frames else None
