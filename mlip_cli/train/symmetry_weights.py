"""Automatic symmetry weights: one regulariser weight per symmetry type, tuned while a model learns equivariance.

A training controller, not a model part: the trainer feeds it the violations a model's
:class:`~mlip_cli.models.hooks.TrainingHooks` regularisers measure and the symmetrisation gaps of
:mod:`mlip_cli.train.symmetry_gap`, and weighs the regularisers with what it returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..errors import UsageError
from ..models.symmetry import SYMMETRY_TYPES

__all__ = ["AutoSymmetryWeights"]


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

    Defaults: ``init=1.0``, ``target=1e-3`` (relative squared embedding violation, see
    :func:`~mlip_cli.models.soft_equivariance.alignment_loss`: about 3% rms), ``lr=0.05`` (at most 5% change per
    step), ``beta=0.9``, ``floor=1e-3``, ``hold_floor=1``,
    ``ceiling=1e4``, ``gap_tolerance=0.05`` (5% of the labels' variance), ``gap_beta=0.5``, ``gap_gate=2``.
    ``lr=0`` keeps fixed weights (a number from the recipe; ``init`` may then be below the floor, even 0, since
    the clip applies only in :meth:`update`). Non-finite measurements are skipped. Types:
    :data:`~mlip_cli.models.symmetry.SYMMETRY_TYPES`.
    """

    def __init__(
        self,
        types=SYMMETRY_TYPES,
        init: float | Mapping[str, float] = 1.0,
        target: float | Mapping[str, float] = 1e-3,
        lr: float = 0.05,
        beta: float = 0.9,
        floor: float = 1e-3,
        ceiling: float = 1e4,
        hold_floor: float = 1.0,
        gap_tolerance: float = 0.05,
        gap_beta: float = 0.5,
        gap_gate: float = 2.0,
    ):
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
            raise UsageError(
                f"symmetry weights: need lr >= 0 and 0 <= beta, gap_beta < 1, got lr={lr}, "
                f"beta={beta}, gap_beta={gap_beta}"
            )
        if not 0 < self.floor <= self.hold_floor <= self.ceiling:
            raise UsageError(
                f"symmetry weights: need 0 < floor <= hold_floor <= ceiling, got {floor}, {hold_floor}, {ceiling}"
            )
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
        return {
            "types": list(self.types),
            "weights": dict(self.weights),
            "targets": dict(self.targets),
            "violations": dict(self.violations),
            "last": dict(self.last),
            "gaps": dict(self.gaps),
            "last_gaps": dict(self.last_gaps),
            "gap_gate": self.gap_gate,
            "steps": self.steps,
            "lr": self.lr,
            "beta": self.beta,
            "floor": self.floor,
            "hold_floor": self.hold_floor,
            "ceiling": self.ceiling,
            "gap_tolerance": self.gap_tolerance,
            "gap_beta": self.gap_beta,
        }

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
