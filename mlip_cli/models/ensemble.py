"""Ensembles: K members of one family trained and run together, uncertainty from their spread.

    model = build_model({"family": "tdn", "elements": [1, 6, 8], "ensemble": 8})
    out = model(batch)        # energy/forces/stress: the members' mean; energy_std, forces_std, ... the spread

Every member is an ordinary :class:`~mlip_cli.models.potential.Potential` with its own random initialisation;
they share one config (``config.ensemble == K``), one data pass and one batch (neighbour list, collation),
and each keeps its own loss, gradient clipping and optimizer state in training.

Why a loop over members rather than stacked weights under ``torch.func.vmap``: a vmap prototype (stacked member
weights, a batching rule for the message kernel folding members into a disjoint union of graphs) saved little,
because a training step of these models is bound by arithmetic and memory traffic, not by per-operation
overhead, so K members cost about K times the model work either way; the loop needs no change in any family
(every family, the Triton kernels and frame averaging run as they are) and K = 1 is the plain model bit for bit.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import ModelConfig
from .hooks import TrainingHooks

__all__ = ["EnsemblePotential", "is_ensemble", "combine_members"]

#: Output keys averaged over members; each also comes stacked as ``<key>_members`` ``[K, ...]``.
AVERAGED = ("energy", "node_energy", "forces", "stress")


def is_ensemble(model: nn.Module) -> bool:
    """Whether ``model`` is an :class:`EnsemblePotential` (its outputs carry the spread)."""
    return isinstance(model, EnsemblePotential)


def combine_members(outs: list[dict[str, torch.Tensor]]) -> dict:
    """The ensemble's output from its members' outputs: the mean under the usual keys, the members stacked
    (``energy_members [K, B]``, ``forces_members [K, N, 3]``, ``stress_members [K, B, 3, 3]``), the spread
    (population standard deviation over members, ``ddof = 0``: ``energy_std [B]``, ``forces_std [N, 3]``,
    ``stress_std [B, 3, 3]``), the per-atom force uncertainty ``forces_uncertainty [N] =
    sqrt(mean_k |F_k - F_mean|^2)`` (rotation invariant) and ``member_outputs`` (the list itself)."""
    combined: dict = {"member_outputs": outs}
    # Spreads from differences to member 0: identical members give exactly 0 and member 0's prediction (the
    # mean of K equal floats can be off by one rounding).
    for key in AVERAGED:
        if key not in outs[0]:
            continue
        stacked = torch.stack([o[key] for o in outs])
        delta = stacked - stacked[0]
        combined[key] = stacked[0] + delta.mean(0)
        combined[f"{key}_members"] = stacked
        if key != "node_energy":
            combined[f"{key}_std"] = delta.std(0, correction=0)
    if "forces" in combined:
        delta = combined["forces_members"] - combined["forces_members"][0]
        deviation = delta - delta.mean(0)
        combined["forces_uncertainty"] = deviation.square().sum(-1).mean(0).sqrt()
    return combined


class EnsemblePotential(nn.Module):
    """``config.ensemble`` members of ``config.family``, run on the same batch (built by ``build_model``).

    Attributes:
        members: the members (``nn.ModuleList`` of Potentials); ``member(k)`` gives one as a standalone model.
        config: the members' shared config (``ensemble`` = number of members).
    """

    def __init__(self, config: ModelConfig, member_class: type):
        super().__init__()
        if config.ensemble < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {config.ensemble}")
        self.config = config
        self.members = nn.ModuleList(member_class(config) for _ in range(config.ensemble))

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def family(self) -> str:
        return self.members[0].family

    @property
    def exactly_equivariant(self) -> bool:
        return self.members[0].exactly_equivariant

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def element_table(self):
        return self.members[0].element_table

    def member(self, k: int) -> nn.Module:
        """Member ``k`` as a plain model of its family (a copy; its config says ``ensemble: 1``)."""
        single = copy.deepcopy(self.members[k])
        single.config = copy.deepcopy(self.config)
        single.config.ensemble = 1
        return single

    def set_statistics(self, e0s=None, scale: float | None = None, shift: float | None = None) -> None:
        """As :meth:`Potential.set_statistics`, for every member."""
        for m in self.members:
            m.set_statistics(e0s, scale, shift)

    def training_hooks(self) -> TrainingHooks:
        """The members' hooks; their regularizers add up over members (each member gets its own gradient)."""
        hooks = [m.training_hooks() for m in self.members]
        if not hooks[0].has_regularizers:
            return hooks[0]

        def regularizers(batch, out: dict) -> dict[str, torch.Tensor]:
            total: dict[str, torch.Tensor] = {}
            for h, member_out in zip(hooks, out["member_outputs"]):
                for name, value in h.regularizers(batch, member_out).items():
                    total[name] = total[name] + value if name in total else value
            return total

        return TrainingHooks(symmetry_types=hooks[0].symmetry_types, regularizers=regularizers)

    def forward(
        self, batch, compute_forces: bool = True, compute_stress: bool = False, create_graph: bool | None = None
    ) -> dict:
        """Each member's :meth:`Potential.forward` on ``batch``, combined by :func:`combine_members`."""
        outs = [m(batch, compute_forces, compute_stress, create_graph) for m in self.members]
        return combine_members(outs)
