"""Error metrics of predictions against labels, accumulated over batches as sums (so processes can add them), and
:func:`evaluate_set`, the one scoring loop that validation, the end-of-run report and ``mlip eval`` share.

Units in :meth:`ErrorMetrics.summary`: energies in meV (per structure) and meV/atom, forces in meV/A,
stress in meV/A^3. Only labelled entries count (the batch masks).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .distributed import DistInfo
from .loss import force_mask

__all__ = ["ErrorMetrics", "QUANTITIES", "evaluate_set"]

# name -> unit, in summary order
QUANTITIES = {
    "energy": "meV",
    "energy_per_atom": "meV/atom",
    "forces": "meV/A",
    "stress": "meV/A^3",
    "forces_all": "meV/A",
}
"""``forces`` scores the atoms free to move (fairchem's convention on OC20, whose sub-surface slab is held fixed);
``forces_all`` every labelled atom, reported only where some atoms are fixed."""


class ErrorMetrics:
    """Sums of absolute and squared errors per quantity, and per element for forces.

    Args:
        elements: atomic numbers for the per-element force errors.
        keep: also keep every (reference, prediction) pair, for parity plots.
    """

    def __init__(self, elements: list[int], keep: bool = False):
        self.elements = [int(z) for z in elements]
        self._index = {z: i for i, z in enumerate(self.elements)}
        self.keep = keep
        # rows: the QUANTITIES in order; columns: sum|e|, sum e^2, count
        self.sums = torch.zeros(len(QUANTITIES), 3, dtype=torch.float64)
        self.element_sums = torch.zeros(len(self.elements), 3, dtype=torch.float64)
        self.pairs: dict[str, list[np.ndarray]] = {k: [] for k in QUANTITIES}

    def _add(self, row: int, name: str, ref: torch.Tensor, pred: torch.Tensor, keep: bool = True) -> None:
        err = (pred.detach().double() - ref.detach().double()).reshape(-1).cpu()
        self.sums[row] += torch.stack([err.abs().sum(), (err * err).sum(), torch.tensor(float(err.numel()))])
        if self.keep and keep:
            self.pairs[name].append(
                np.stack(
                    [ref.detach().double().reshape(-1).cpu().numpy(), pred.detach().double().reshape(-1).cpu().numpy()]
                )
            )

    def update(self, batch, out: dict[str, torch.Tensor]) -> None:
        """Add one batch of predictions (``out`` from a model forward) against the batch labels."""
        natoms = batch.natoms.to(out["energy"].device).double()
        e_mask = batch.energy_mask.to(out["energy"].device)
        if bool(e_mask.any()):
            ref, pred = batch.energy.double()[e_mask], out["energy"].double()[e_mask]
            self._add(0, "energy", ref, pred)
            self._add(1, "energy_per_atom", ref / natoms[e_mask], pred / natoms[e_mask])
        if "forces" in out and bool(batch.forces_mask.any()):
            every = batch.forces_mask
            self._add(4, "forces_all", batch.forces[every], out["forces"][every], keep=False)
            f_mask = force_mask(batch, "free")
            ref, pred = batch.forces[f_mask].double(), out["forces"][f_mask].double()
            self._add(2, "forces", ref, pred)
            err = (pred.detach() - ref.detach()).cpu()
            numbers = batch.numbers[f_mask].cpu()
            for z in numbers.unique().tolist():
                if z in self._index:
                    e = err[numbers == z].reshape(-1)
                    self.element_sums[self._index[z]] += torch.stack(
                        [e.abs().sum(), (e * e).sum(), torch.tensor(float(e.numel()))]
                    )
        if "stress" in out and bool(batch.stress_mask.any()):
            s_mask = batch.stress_mask
            self._add(3, "stress", batch.stress[s_mask], out["stress"][s_mask])

    def all_reduce(self) -> None:
        """Sum the accumulators over the processes of a ``torch.distributed`` group."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            flat = torch.cat([self.sums.reshape(-1), self.element_sums.reshape(-1)])
            dist.all_reduce(flat)
            n = self.sums.numel()
            self.sums = flat[:n].reshape(self.sums.shape)
            self.element_sums = flat[n:].reshape(self.element_sums.shape)

    def summary(self) -> dict[str, float]:
        """``{quantity_mae, quantity_rmse}`` in meV units for every quantity that had labels."""
        result: dict[str, float] = {}
        free, every = self.sums[2, 2], self.sums[4, 2]
        for row, name in enumerate(QUANTITIES):
            s_abs, s_sq, n = self.sums[row].tolist()
            if name == "forces_all" and not every > free:
                continue  # no atom was fixed: the same numbers as "forces"
            if n > 0:
                result[f"{name}_mae"] = 1000.0 * s_abs / n
                result[f"{name}_rmse"] = 1000.0 * math.sqrt(s_sq / n)
        return result

    def per_element(self) -> dict[int, dict[str, float]]:
        """Force MAE/RMSE (meV/A) and the number of force components, per element present."""
        table = {}
        for z, (s_abs, s_sq, n) in zip(self.elements, self.element_sums.tolist()):
            if n > 0:
                table[z] = {
                    "forces_mae": 1000.0 * s_abs / n,
                    "forces_rmse": 1000.0 * math.sqrt(s_sq / n),
                    "components": int(n),
                }
        return table

    def parity_data(self) -> dict[str, np.ndarray]:
        """``{quantity: array [2, n]}`` of (reference, prediction); needs ``keep=True``."""
        return {k: np.concatenate(v, axis=1) for k, v in self.pairs.items() if v}


def evaluate_set(
    model,
    graphs,
    batch_size: int,
    device: torch.device,
    info: DistInfo | None = None,
    compute_stress: bool = False,
    keep: bool = False,
    progress=None,
    on_batch=None,
) -> ErrorMetrics:
    """Error metrics of ``model`` on a graph set; with ``info``, each process takes a slice and sums are shared.

    ``graphs`` is an :class:`~mlip_datasets.torch_data.AtomicGraphDataset`; ``progress(done)`` is called after
    each batch with the number of structures scored so far; ``on_batch(batch, out)`` sees every batch and the
    model's output on it (``mlip eval`` collects an ensemble's uncertainties there).
    """
    info = info or DistInfo()
    metrics = ErrorMetrics(model.config.elements, keep=keep)
    mine = list(range(info.rank, len(graphs), info.world))
    was_training = model.training
    model.eval()
    for start in range(0, len(mine), batch_size):
        batch = graphs.batch(mine[start : start + batch_size]).to(device)
        out = model(batch, compute_forces=True, compute_stress=compute_stress and bool(batch.stress_mask.any()))
        metrics.update(batch, out)
        if on_batch is not None:
            on_batch(batch, out)
        if progress is not None:
            progress(min(start + batch_size, len(mine)))
    metrics.all_reduce()
    model.train(was_training)
    return metrics
