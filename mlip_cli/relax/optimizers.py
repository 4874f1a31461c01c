"""FIRE and L-BFGS over many structures at once, in torch, step for step the same as ASE's.

Both work on flat tensors: positions and forces ``[N, 3]`` of all structures, ``graph [N]`` giving each atom's
structure. Every per-structure quantity ASE computes with ``np.vdot`` or a max over atoms is a segment sum or
segment max here, so one step costs a handful of tensor operations whatever the number of structures.
Fixed atoms need no special case: their forces are zero (the caller applies the constraint, as ASE's
``FixAtoms`` does in ``get_forces``), so neither optimizer ever moves them; the caller also masks the step.

Convergence is the caller's (ASE's ``irun``: evaluate, stop when every free atom has ``|F| < fmax``,
otherwise step). Structures that finish leave the batch through :meth:`keep`.
"""

from __future__ import annotations

import torch

__all__ = ["BatchedFIRE", "BatchedLBFGS", "segment_sum", "segment_max", "OPTIMIZERS"]


def segment_sum(values: torch.Tensor, graph: torch.Tensor, num: int) -> torch.Tensor:
    """Per-structure sums. Shapes: values ``[N]``, graph ``[N]`` -> ``[num]``."""
    return values.new_zeros(num).index_add_(0, graph, values)


def segment_max(values: torch.Tensor, graph: torch.Tensor, num: int) -> torch.Tensor:
    """Per-structure maxima of non-negative values (0 for an empty structure). Shapes: ``[N]`` -> ``[num]``."""
    return values.new_zeros(num).scatter_reduce_(0, graph, values, reduce="amax", include_self=True)


def _dot(a: torch.Tensor, b: torch.Tensor, graph: torch.Tensor, num: int) -> torch.Tensor:
    """Per-structure ``vdot`` of ``[N, 3]`` tensors -> ``[num]``."""
    return segment_sum((a * b).sum(dim=1), graph, num)


class BatchedFIRE:
    """ASE's :class:`ase.optimize.FIRE` (defaults and update rule, ``downhill_check=False``) per structure.

    Args:
        graph: structure index of each atom ``[N]`` (0..num-1, sorted).
        num: number of structures.
        dt, maxstep, dtmax, Nmin, finc, fdec, astart, fa, a: as in ASE (``maxstep`` caps the norm of a
            structure's whole displacement, as ASE's FIRE does).
    """

    name = "FIRE"

    def __init__(
        self,
        graph: torch.Tensor,
        num: int,
        *,
        dt: float = 0.1,
        maxstep: float = 0.2,
        dtmax: float = 1.0,
        Nmin: int = 5,
        finc: float = 1.1,
        fdec: float = 0.5,
        astart: float = 0.1,
        fa: float = 0.99,
        a: float = 0.1,
        dtype: torch.dtype = torch.float64,
    ):
        self.graph, self.num = graph, num
        self.maxstep, self.dtmax, self.Nmin = maxstep, dtmax, Nmin
        self.finc, self.fdec, self.astart, self.fa = finc, fdec, astart, fa
        device = graph.device
        self.dt = torch.full((num,), dt, dtype=dtype, device=device)
        self.a = torch.full((num,), a, dtype=dtype, device=device)
        self.nsteps = torch.zeros(num, dtype=torch.long, device=device)
        self.vel: torch.Tensor | None = None  # [N, 3]; None before the first step, as in ASE

    def step(self, forces: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The displacement ``[N, 3]`` for forces ``[N, 3]`` (constraint already applied); FIRE ignores the
        positions ``[N, 3]`` (the argument keeps one signature for both optimizers)."""
        g, num = self.graph, self.num
        if self.vel is None:
            self.vel = torch.zeros_like(forces)
        else:
            vf = _dot(forces, self.vel, g, num)
            f2 = _dot(forces, forces, g, num)
            v2 = _dot(self.vel, self.vel, g, num)
            downhill = vf > 0
            # ASE: v <- (1 - a) v + a F/|F| |v|  where the power is positive, else v <- 0
            mix = torch.where(downhill, self.a * v2.sqrt() / f2.sqrt().clamp_min(1e-300), torch.zeros_like(vf))
            keep = torch.where(downhill, 1.0 - self.a, torch.zeros_like(vf))
            self.vel = keep[g, None] * self.vel + mix[g, None] * forces
            grow = downhill & (self.nsteps > self.Nmin)
            self.dt = torch.where(
                grow, (self.dt * self.finc).clamp(max=self.dtmax), torch.where(downhill, self.dt, self.dt * self.fdec)
            )
            self.a = torch.where(
                grow, self.a * self.fa, torch.where(downhill, self.a, torch.full_like(self.a, self.astart))
            )
            self.nsteps = torch.where(downhill, self.nsteps + 1, torch.zeros_like(self.nsteps))
        self.vel = self.vel + self.dt[g, None] * forces
        dr = self.dt[g, None] * self.vel
        norm = _dot(dr, dr, g, num).sqrt()
        scale = torch.where(norm > self.maxstep, self.maxstep / norm.clamp_min(1e-300), torch.ones_like(norm))
        return dr * scale[g, None]

    def keep(self, structures: torch.Tensor, atoms: torch.Tensor, graph: torch.Tensor) -> None:
        """Drop finished structures: ``structures [num]`` and ``atoms [N]`` masks of those that stay;
        ``graph`` is the new (renumbered) structure index of the remaining atoms."""
        self.dt, self.a, self.nsteps = self.dt[structures], self.a[structures], self.nsteps[structures]
        if self.vel is not None:
            self.vel = self.vel[atoms]
        self.graph, self.num = graph, int(structures.sum())


class BatchedLBFGS:
    """ASE's :class:`ase.optimize.LBFGS` (no line search) per structure: two-loop recursion with the
    initial inverse Hessian ``1/alpha``, steps scaled so the largest atomic move is at most ``maxstep``.

    All structures start together and leave only by :meth:`keep`, so they share the iteration count and the
    history length ``k`` (up to ``memory`` pairs).

    The two loops are computed in compact form: with the per-structure inner products ``SY[i, j] = <s_i, y_j>``
    (kept up to date, one new row and column per step), the first loop's coefficients solve the upper
    triangular system ``(I + diag(rho) triu(SY, 1)) a = rho * <s, g>`` and the second loop's
    ``(I + diag(rho) tril(SY^T, -1)) c = a - rho * <y, H0 q>``: the same numbers as ASE's ``2k`` sequential
    vector updates, in a handful of batched operations whatever ``k``.

    Args:
        graph, num: as for :class:`BatchedFIRE`.
        maxstep, memory, damping, alpha: as in ASE.
    """

    name = "LBFGS"

    def __init__(
        self,
        graph: torch.Tensor,
        num: int,
        *,
        maxstep: float = 0.2,
        memory: int = 100,
        damping: float = 1.0,
        alpha: float = 70.0,
        dtype: torch.dtype = torch.float64,
    ):
        self.graph, self.num = graph, num
        self.maxstep, self.memory, self.damping, self.H0 = maxstep, memory, damping, 1.0 / alpha
        device = graph.device
        self.S = torch.zeros(0, len(graph), 3, dtype=dtype, device=device)  # [k, N, 3], oldest first
        self.Y = torch.zeros_like(self.S)
        self.rho = torch.zeros(num, 0, dtype=dtype, device=device)  # [num, k]
        self.SY = torch.zeros(num, 0, 0, dtype=dtype, device=device)  # [num, k, k]: <s_i, y_j>
        self.iteration = 0
        self.r0: torch.Tensor | None = None
        self.f0: torch.Tensor | None = None

    def _dots(self, stack: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-structure inner products of each history vector with ``v``: ``[k, N, 3], [N, 3] -> [num, k]``."""
        per_atom = (stack * v).sum(dim=2).T  # [N, k]
        return per_atom.new_zeros(self.num, per_atom.shape[1]).index_add_(0, self.graph, per_atom)

    def _update(self, s0: torch.Tensor, y0: torch.Tensor) -> None:
        g, num = self.graph, self.num
        ys = _dot(y0, s0, g, num)
        # ASE divides without a guard; a zero (or NaN) curvature pair is dropped here instead of poisoning z
        ok = torch.isfinite(1.0 / ys) & (ys != 0)
        rho = torch.where(ok, 1.0 / torch.where(ok, ys, torch.ones_like(ys)), torch.zeros_like(ys))
        s_old_y_new = self._dots(self.S, y0)  # <s_i, y_new>: new column
        s_new_y_old = self._dots(self.Y, s0)  # <s_new, y_j>: new row
        k = self.S.shape[0]
        SY = self.SY.new_zeros(num, k + 1, k + 1)
        SY[:, :k, :k] = self.SY
        SY[:, :k, k] = s_old_y_new
        SY[:, k, :k] = s_new_y_old
        SY[:, k, k] = ys
        self.SY, self.rho = SY, torch.cat([self.rho, rho[:, None]], dim=1)
        self.S, self.Y = torch.cat([self.S, s0[None]]), torch.cat([self.Y, y0[None]])
        if self.iteration > self.memory:  # as ASE: drop the oldest pair
            self.S, self.Y, self.rho, self.SY = self.S[1:], self.Y[1:], self.rho[:, 1:], self.SY[:, 1:, 1:]

    def step(self, forces: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The displacement ``[N, 3]`` for forces and positions ``[N, 3]``."""
        g, num = self.graph, self.num
        if self.iteration > 0:
            self._update(positions - self.r0, self.f0 - forces)  # y is the change of the gradient (-forces)
        grad = -forces
        k = self.S.shape[0]
        if k:
            eye = torch.eye(k, dtype=grad.dtype, device=grad.device)
            rho = self.rho
            upper = eye + rho[:, :, None] * torch.triu(self.SY, diagonal=1)
            rhs = (rho * self._dots(self.S, grad))[:, :, None]
            a = torch.linalg.solve_triangular(upper, rhs, upper=True)[..., 0]
            q = grad - torch.einsum("nk,knd->nd", a[g], self.Y)
            z = self.H0 * q
            lower = eye + rho[:, :, None] * torch.tril(self.SY.transpose(1, 2), diagonal=-1)
            c = torch.linalg.solve_triangular(lower, (a - rho * self._dots(self.Y, z))[:, :, None], upper=False)[..., 0]
            z = z + torch.einsum("nk,knd->nd", c[g], self.S)
        else:
            z = self.H0 * grad
        self.iteration += 1
        p = -z
        longest = segment_max(p.norm(dim=1), g, num)
        scale = torch.where(longest >= self.maxstep, self.maxstep / longest.clamp_min(1e-300), torch.ones_like(longest))
        self.r0, self.f0 = positions, forces
        return p * scale[g, None] * self.damping

    def keep(self, structures: torch.Tensor, atoms: torch.Tensor, graph: torch.Tensor) -> None:
        """See :meth:`BatchedFIRE.keep`."""
        self.S, self.Y = self.S[:, atoms], self.Y[:, atoms]
        self.rho, self.SY = self.rho[structures], self.SY[structures]
        if self.r0 is not None:
            self.r0, self.f0 = self.r0[atoms], self.f0[atoms]
        self.graph, self.num = graph, int(structures.sum())


OPTIMIZERS = {"FIRE": BatchedFIRE, "LBFGS": BatchedLBFGS}
