"""Learned (soft) equivariance: declared irreps, the alignment loss, batch transforms, tuned weights, frames.

A model that is not equivariant by construction (:class:`~mlip_cli.models.transip.TransIPPotential`) is trained
to be: for a random orthogonal ``g`` its embeddings must satisfy ``embed(g x) = D(g) embed(x)``, where the
embedding channels carry declared irreps (:class:`Irreps`) and ``D(g)`` is block-diagonal in real Wigner D
matrices (:func:`mlip_kernels.wigner.wigner_D`). For ``l = 1`` our real-harmonic basis is Cartesian order
``(x, y, z)`` and ``D_1(R) = R`` exactly, so vector channels are plain Cartesian vectors.

Pieces:

* :class:`Irreps`, :func:`rotate_embeddings`, :func:`alignment_loss`: the declared representation and the
  relative violation ``|embed(g x) - D(g) embed(x)|^2 / mean(|embed|^2)``;
* :func:`transform_batch`, :func:`random_rotate_batch`, :func:`random_reflections`: move a whole
  :class:`~mlip_datasets.graph.Batch` (positions, cell, forces, stress) by per-structure orthogonal maps;
* :class:`AutoSymmetryWeights`: one regulariser weight per symmetry type: dual ascent while the data has the
  symmetry, released when the symmetrisation gap says it does not;
* :func:`safe_eigh`, :func:`pca_frames`, :data:`FRAME_SIGNS`: the frames of frame averaging.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import torch

from mlip_kernels.wigner import random_rotation, wigner_D

from ..errors import UsageError

__all__ = [
    "Irreps", "rotate_embeddings", "alignment_loss", "transform_batch", "random_rotate_batch",
    "random_reflections", "AutoSymmetryWeights", "safe_eigh", "pca_frames", "FRAME_SIGNS",
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

    def __add__(self, other: "Irreps") -> "Irreps":
        return Irreps(self.blocks + other.blocks)

    def __mul__(self, times: int) -> "Irreps":
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
        count = torch.zeros(size, dtype=moved.dtype, device=moved.device).index_add_(
            0, groups, torch.ones_like(groups, dtype=moved.dtype)).clamp(min=1)[:, None]

        def spread(x):
            mean = torch.zeros(size, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, groups, x) / count
            return (x - mean.index_select(0, groups)).pow(2).sum()

        den = 0.5 * (spread(moved) + spread(expected))
    return num / (den + torch.finfo(moved.dtype).tiny)


# ------------------------------------------------------------------------------------ batch transforms
def transform_batch(batch, R: torch.Tensor):
    """The batch with structure ``b`` moved by the orthogonal ``R[b]``: ``r -> R r`` for positions, cell vectors
    (rows), forces; ``sigma -> R sigma R^T``; energies, edges and integer shifts unchanged.

    Shapes:
        R ``[B, 3, 3]`` (or ``[3, 3]`` for all) -> a new batch (the input is not modified).
    """
    dtype = batch.positions.dtype
    R = R.to(device=batch.positions.device, dtype=dtype)
    if R.dim() == 2:
        R = R.expand(batch.num_graphs, 3, 3)
    Rt = R.transpose(1, 2)
    atom_Rt = Rt.index_select(0, batch.batch)
    changes = dict(positions=torch.einsum("ni,nij->nj", batch.positions, atom_Rt),
                   cell=torch.bmm(batch.cell.to(dtype), Rt))
    if getattr(batch, "forces", None) is not None:
        changes["forces"] = torch.einsum("ni,nij->nj", batch.forces.to(dtype), atom_Rt)
    if getattr(batch, "stress", None) is not None:
        changes["stress"] = R @ batch.stress.to(dtype) @ Rt
    return dataclasses.replace(batch, **changes)


def random_reflections(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """Mirrors through random planes: ``I - 2 u u^T`` with ``u`` uniform on the sphere. Shapes: -> ``[n, 3, 3]``."""
    u = torch.randn(n, 3, dtype=torch.float64, generator=generator)
    u = u / u.norm(dim=1, keepdim=True)
    return (torch.eye(3, dtype=torch.float64) - 2 * u[:, :, None] * u[:, None, :]).to(dtype)


def random_rotate_batch(batch, generator: torch.Generator | None = None, reflections: bool = False):
    """Rotation augmentation: each structure gets its own Haar-random rotation (:func:`transform_batch`).

    Args:
        batch: a :class:`~mlip_datasets.graph.Batch`.
        generator: random source; None draws from torch's global RNG (so a resumed run replays it).
        reflections: also invert each structure with probability 1/2 (Haar-random over O(3)).
    """
    R = random_rotation(batch.num_graphs, generator=generator)
    if reflections:
        flip = torch.rand(batch.num_graphs, dtype=torch.float64, generator=generator) < 0.5
        R = torch.where(flip[:, None, None], -R, R)
    return transform_batch(batch, R)


# ------------------------------------------------------------------------------------ tuned weights
def _running_mean(store: dict[str, float], name: str, value: float, beta: float) -> float:
    """``store[name] <- value`` the first time, else ``beta * store[name] + (1 - beta) * value``; returns it."""
    prev = store.get(name)
    store[name] = value if prev is None else beta * prev + (1 - beta) * value
    return store[name]


class AutoSymmetryWeights:
    """One regulariser weight per symmetry type, tuned during training (no nn state).

    Two questions per type ``k``: *does the data have this symmetry?* and, if so, *how hard must it be pushed?*

    * **Enforce** (the default state): training solves ``min task_loss`` subject to ``violation_k <= target_k``
      through the Lagrangian ``task_loss + sum_k weight_k * violation_k``; the weights are the multipliers. After
      each step :meth:`update` takes the measured violations and does multiplicative dual ascent::

          v_k      <- v (first update) or  beta * v_k + (1 - beta) * v      (running mean of the noisy measure)
          weight_k <- clip(weight_k * exp(lr * tanh((v_k - target_k) / target_k)), hold_floor, ceiling)

      (the weight grows while the violation is above its target and shrinks, never below ``hold_floor``, while
      it is below; the tanh bounds each step to a factor ``exp(+-lr)``).
    * **Release**: at each validation :meth:`update_gaps` takes the *symmetrisation gap* of type ``k``: how much
      the validation force MSE rises when the model's prediction is replaced by its average over the symmetry
      group, as a share of the labels' mean square (``(T(f_sym) - T(f)) / T(0)``;
      :func:`mlip_cli.train.symmetry_gap.symmetrization_gaps`). Writing the prediction as
      ``f = f_sym + f_anti``: if the labels have the symmetry, ``f_anti`` is noise and removing it cannot hurt
      on held-out data (gap ``<= 0`` up to noise); if they do not, ``f_anti`` carries signal and the gap
      approaches the share of the labels' variance that breaks the symmetry. Gaps count only once the
      violation is on target (``<= gap_gate * target``, see :meth:`update_gaps`). While the running mean of the
      counted gaps (weight ``gap_beta`` on the past) is above ``gap_tolerance`` the type is *released*: its
      weight decays by ``exp(-4 lr)`` per step to ``floor`` instead of following the violation, so the model
      may learn the broken symmetry. It is enforced again when the gap falls back. The weights themselves thus
      show the verdict: at least ``hold_floor`` for a symmetry that holds, ``floor`` for one the data breaks.

    Defaults: ``init=1.0``, ``target=1e-3`` (relative squared embedding violation, see :func:`alignment_loss`:
    about 3% rms), ``lr=0.05`` (at most 5% change per step), ``beta=0.9``, ``floor=1e-3``, ``hold_floor=1``,
    ``ceiling=1e4``, ``gap_tolerance=0.05`` (5% of the labels' variance), ``gap_beta=0.5``, ``gap_gate=2``.
    ``lr=0`` keeps fixed weights (a number from the recipe; ``init`` may then be below the floor, even 0, since
    the clip applies only in :meth:`update`). Non-finite measurements are skipped. Types:
    ``("rotation", "reflection")``.
    """

    def __init__(self, types=("rotation", "reflection"), init: float | Mapping[str, float] = 1.0,
                 target: float | Mapping[str, float] = 1e-3, lr: float = 0.05, beta: float = 0.9,
                 floor: float = 1e-3, ceiling: float = 1e4, hold_floor: float = 1.0, gap_tolerance: float = 0.05,
                 gap_beta: float = 0.5, gap_gate: float = 2.0):
        self.types = tuple(str(t) for t in types)
        if not self.types or len(set(self.types)) != len(self.types):
            raise UsageError(f"symmetry weights: types must be distinct names, got {list(types)}")
        self.weights, self.targets = self._per_type(init, "init"), self._per_type(target, "target")
        self.lr, self.beta, self.floor, self.ceiling = float(lr), float(beta), float(floor), float(ceiling)
        self.hold_floor = float(hold_floor)
        self.gap_tolerance, self.gap_beta, self.gap_gate = float(gap_tolerance), float(gap_beta), float(gap_gate)
        if not all(v > 0 for v in self.targets.values()):
            raise UsageError(f"symmetry weights: targets must be > 0, got {self.targets}")
        if self.lr < 0 or not 0 <= self.beta < 1 or not 0 <= self.gap_beta < 1:
            raise UsageError(f"symmetry weights: need lr >= 0 and 0 <= beta, gap_beta < 1, got lr={lr}, "
                             f"beta={beta}, gap_beta={gap_beta}")
        if not 0 < self.floor <= self.hold_floor <= self.ceiling:
            raise UsageError(f"symmetry weights: need 0 < floor <= hold_floor <= ceiling, got {floor}, {hold_floor}, "
                             f"{ceiling}")
        if not all(0 <= w <= self.ceiling for w in self.weights.values()):
            raise UsageError(f"symmetry weights: init must be in [0, ceiling={ceiling}], got {self.weights}")
        self.violations: dict[str, float] = {}  # running means (absent before the first update)
        self.last: dict[str, float] = {}  # last raw measurements
        self.gaps: dict[str, float] = {}  # running means of the symmetrisation gaps that count
        self.last_gaps: dict[str, float] = {}  # last measured gaps
        self.steps = 0

    def _per_type(self, value, name: str) -> dict[str, float]:
        if isinstance(value, Mapping):
            missing = [t for t in self.types if t not in value]
            if missing:
                raise UsageError(f"symmetry weights: {name} has no value for {missing}")
            return {t: float(value[t]) for t in self.types}
        return {t: float(value) for t in self.types}

    def __getitem__(self, name: str) -> float:
        return self.weights[name]

    def released(self, name: str) -> bool:
        """Whether type ``name`` is judged broken by the data (running gap above the tolerance)."""
        return self.gaps.get(name, -math.inf) > self.gap_tolerance

    def _check(self, values: Mapping[str, float]) -> None:
        unknown = sorted(set(values) - set(self.types))
        if unknown:
            raise ValueError(f"symmetry weights: unknown types {unknown}; known: {list(self.types)}")

    def update(self, violations: Mapping[str, float]) -> dict[str, float]:
        """One step from this step's violations (see the class rule); returns the new weights."""
        self._check(violations)
        for name, value in violations.items():
            v = float(value)
            if not math.isfinite(v):
                continue
            self.last[name] = v
            v_bar = _running_mean(self.violations, name, v, self.beta)
            if self.lr > 0:  # lr = 0: fixed weights, measured and logged only
                target = self.targets[name]
                if self.released(name):
                    self.weights[name] = max(self.weights[name] * math.exp(-4 * self.lr), self.floor)
                else:
                    step = self.lr * math.tanh((v_bar - target) / target)
                    self.weights[name] = min(max(self.weights[name] * math.exp(step), self.hold_floor), self.ceiling)
        self.steps += 1
        return dict(self.weights)

    def update_gaps(self, gaps: Mapping[str, float]) -> None:
        """Record symmetrisation gaps measured on validation data (running mean per type).

        An enforced type's gap counts only once its violation is on target (running mean at most
        ``gap_gate * target``): a model that is not yet equivariant fits data in the training orientations
        better than its symmetrised self whatever the labels, so an earlier gap says nothing about them.
        """
        self._check(gaps)
        for name, value in gaps.items():
            g = float(value)
            if not math.isfinite(g):
                continue
            self.last_gaps[name] = g
            on_target = self.violations.get(name, math.inf) <= self.gap_gate * self.targets[name]
            if self.released(name) or on_target:
                _running_mean(self.gaps, name, g, self.gap_beta)

    def weighted_sum(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum_k weight_k * losses[k]`` over the types present in ``losses``."""
        return sum(self.weights[k] * v for k, v in losses.items())  # type: ignore[return-value]

    def log(self) -> dict[str, float]:
        """Flat numbers for a metrics file: ``symmetry_weight/<type>``, ``symmetry_violation/<type>`` (last raw),
        ``symmetry_gap/<type>`` (running mean) and ``symmetry_holds/<type>`` (1: enforced, 0: released)."""
        out = {f"symmetry_weight/{k}": w for k, w in self.weights.items()}
        out.update({f"symmetry_violation/{k}": v for k, v in self.last.items()})
        out.update({f"symmetry_gap/{k}": v for k, v in self.last_gaps.items()})
        out.update({f"symmetry_holds/{k}": int(not self.released(k)) for k in self.last_gaps})
        return out

    def state_dict(self) -> dict:
        """Plain data (floats, strings, ints): loads with ``torch.load(weights_only=True)``."""
        return {"types": list(self.types), "weights": dict(self.weights), "targets": dict(self.targets),
                "violations": dict(self.violations), "last": dict(self.last), "gaps": dict(self.gaps),
                "last_gaps": dict(self.last_gaps), "gap_gate": self.gap_gate,
                "steps": self.steps, "lr": self.lr, "beta": self.beta, "floor": self.floor, "hold_floor": self.hold_floor,
                "ceiling": self.ceiling, "gap_tolerance": self.gap_tolerance, "gap_beta": self.gap_beta}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` (weights, running measurements, step count and settings)."""
        if list(state["types"]) != list(self.types):
            raise ValueError(f"symmetry weights: saved types {list(state['types'])} != {list(self.types)}")
        self.weights = {k: float(v) for k, v in state["weights"].items()}
        self.targets = {k: float(v) for k, v in state["targets"].items()}
        self.violations = {k: float(v) for k, v in state["violations"].items()}
        self.last = {k: float(v) for k, v in state.get("last", {}).items()}
        self.gaps = {k: float(v) for k, v in state.get("gaps", {}).items()}
        self.last_gaps = {k: float(v) for k, v in state.get("last_gaps", {}).items()}
        self.gap_gate = float(state.get("gap_gate", self.gap_gate))
        self.steps = int(state["steps"])
        self.lr, self.beta = float(state["lr"]), float(state["beta"])
        self.floor, self.ceiling = float(state["floor"]), float(state["ceiling"])
        self.hold_floor = float(state.get("hold_floor", self.hold_floor))
        self.gap_tolerance = float(state.get("gap_tolerance", self.gap_tolerance))
        self.gap_beta = float(state.get("gap_beta", self.gap_beta))


# ---------------------------------------------------------------------------------------- frames
#: The 8 sign patterns of a principal frame's axes (proper and improper frames: O(3) averaging).
FRAME_SIGNS = torch.tensor([[a, b, c] for a in (1.0, -1.0) for b in (1.0, -1.0) for c in (1.0, -1.0)],
                           dtype=torch.float64)


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
