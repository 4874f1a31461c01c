"""TorchSim model interface: batched MD and relaxation of many structures with an mlip model.

    import torch, torch_sim as ts
    from mlip_cli.torchsim import MLIPModel
    model = MLIPModel("run/best.pt", dtype=torch.float64)       # or a loaded model
    state = ts.io.atoms_to_state(list_of_atoms, model.device, model.dtype)
    out = model(state)          # energy [B] eV, forces [N, 3] eV/A, stress [B, 3, 3] eV/A^3

Needs the ``torchsim`` extra (``pip install 'mlip-cli[torchsim]'``, TorchSim 0.3). TorchSim passes a batched
``SimState``: positions ``[N, 3]``, ``cell [B, 3, 3]`` with the cell vectors as *columns* (``row_vector_cell``
is ASE's convention), one ``pbc`` for the whole batch, atomic numbers and ``system_idx [N]``. Each structure
keeps its own skin neighbour list (:class:`mlip_cli.calculator.SkinNeighborList`, the one the ASE calculator
uses), so a list is rebuilt only when one of its atoms moved more than ``skin / 2``; the pairs of all
structures go into one :func:`mlip_datasets.graph.unlabelled_batch` and one model call.

Units and signs are ASE's (TorchSim uses the same: eV, A, amu, time in ``sqrt(amu A^2 / eV)``; its stress is
``(1/V) dE/d(strain)``, positive under tension). Non-periodic batches get a zero stress. A structure whose
positions or cell are not finite gets NaN energy, forces and stress (the others are unaffected).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mlip_datasets.graph import unlabelled_batch

from .calculator import DEFAULT_SKIN, SkinNeighborList
from .checkpoint import load_model, resolve_dtype

try:
    from torch_sim.models.interface import ModelInterface
    from torch_sim.state import SimState
except ImportError as err:  # an optional extra: say how to get it
    raise ImportError(
        f"mlip_cli.torchsim needs TorchSim ({err}); install it with: pip install 'mlip-cli[torchsim]'"
    ) from err

__all__ = ["MLIPModel"]


class MLIPModel(ModelInterface):
    """An mlip model (any family) as a TorchSim ``ModelInterface``.

    Args:
        model: a :class:`mlip_cli.models.Potential`, or the path of a checkpoint or run directory (loaded with
            :func:`mlip_cli.checkpoint.load_model`, EMA weights unless ``use_ema=False``).
        device: where to run (default: where the model is; ``"cpu"`` for a path).
        dtype: ``"float32"``/``"float64"`` or a torch dtype (default: the model's). TorchSim states should be
            built in the same dtype (``ts.io.atoms_to_state(atoms, model.device, model.dtype)``).
        compute_forces, compute_stress: what :meth:`forward` returns besides the energy (settable later).
        skin: neighbour-list skin in A; 0 rebuilds every list on every call.
        use_ema: for a path, take the EMA weights when the checkpoint has them.
    """

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        compute_forces: bool = True,
        compute_stress: bool = True,
        skin: float = DEFAULT_SKIN,
        use_ema: bool = True,
    ):
        super().__init__()
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model, device=device or "cpu", dtype=dtype, use_ema=use_ema)
        param = next(iter(model.parameters()), None)
        self._device = (
            torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
        )
        self._dtype = resolve_dtype(dtype, getattr(model, "dtype", torch.float32))
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"  # radial cutoff: neighbours grow with density
        self.model = model.to(device=self._device, dtype=self._dtype).eval()
        self.cutoff = float(model.cutoff)
        self.skin = float(skin)
        self._lists: list[SkinNeighborList] = []  # one per structure slot of the batch
        self.model_calls = 0

    # TorchSim's base class raises on these setters; both are plain flags here
    @ModelInterface.compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    @ModelInterface.compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    def _edges(self, positions: np.ndarray, cells: np.ndarray, pbc: np.ndarray, numbers: np.ndarray, ptr, usable):
        """Pairs closer than the cutoff in every usable structure, with atom offsets: ``edge_index [2, E]``,
        ``shifts [E, 3]``.

        A list slot may meet another structure than last time (TorchSim's autobatcher swaps structures in and
        out); :class:`SkinNeighborList` rebuilds whenever the cell, pbc, numbers or atom count changed or an
        atom moved more than skin/2 from where the list was built, so a reused list is still complete.
        """
        while len(self._lists) < len(cells):
            self._lists.append(SkinNeighborList(self.cutoff, self.skin))
        src, dst, shifts = [], [], []
        for b, cell in enumerate(cells):
            if not usable[b]:
                continue
            a, z = ptr[b], ptr[b + 1]
            i, j, shift = self._lists[b].edges(positions[a:z], cell, pbc, numbers[a:z])
            src.append(i + a)
            dst.append(j + a)
            shifts.append(shift)
        if not src:
            return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long)
        return torch.as_tensor(np.stack([np.concatenate(src), np.concatenate(dst)])), torch.as_tensor(
            np.concatenate(shifts)
        )

    def forward(self, state: SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        """Energies ``[B]``, and when enabled forces ``[N, 3]`` and stress ``[B, 3, 3]``, in the model dtype.

        The state is not modified. Extra keyword arguments (TorchSim passes none today) are ignored.
        """
        if isinstance(state, dict):
            state = SimState(**{"masses": torch.ones_like(state["positions"][:, 0]), **state})
        device, dtype = self._device, self._dtype
        num = int(state.cell.shape[0])
        numbers = state.atomic_numbers.to(device=device, dtype=torch.long)
        positions = state.positions.to(device=device, dtype=dtype)
        cell = state.row_vector_cell.to(device=device, dtype=dtype)  # ASE convention: vectors as rows
        node_graph = state.system_idx.to(device=device, dtype=torch.long)
        # TorchSim 0.3 has one bool for the batch; later versions may give a [3] tensor: both broadcast to [B, 3]
        pbc = torch.as_tensor(state.pbc, dtype=torch.bool).reshape(-1).expand(3).to(device)
        natoms = torch.bincount(node_graph, minlength=num)
        ptr = [0, *np.cumsum(natoms.tolist()).tolist()]

        pos64 = state.positions.detach().to("cpu", torch.float64).numpy()
        cell64 = state.row_vector_cell.detach().to("cpu", torch.float64).numpy()
        finite_atoms = np.isfinite(pos64).all(axis=1)
        usable = [bool(finite_atoms[ptr[b] : ptr[b + 1]].all() and np.isfinite(cell64[b]).all()) for b in range(num)]
        edge_index, shifts = self._edges(pos64, cell64, pbc.cpu().numpy(), numbers.cpu().numpy(), ptr, usable)
        batch = unlabelled_batch(
            numbers,
            # NaN coordinates have no edges and would only spread NaN through the model: zero them, mark after
            torch.where(torch.as_tensor(finite_atoms, device=device)[:, None], positions, 0.0),
            torch.nan_to_num(cell, nan=0.0, posinf=0.0, neginf=0.0),
            pbc.expand(num, 3),
            edge_index.to(device),
            shifts.to(device=device, dtype=dtype),
            node_graph,
            charge=_per_system(state, "charge", num),
            spin=_per_system(state, "spin", num),
            dtype=dtype,
        )
        out = self.model(batch, compute_forces=self._compute_forces, compute_stress=self._compute_stress)
        self.model_calls += 1
        results = {"energy": out["energy"].detach().to(dtype)}
        if self._compute_forces:
            results["forces"] = out["forces"].detach().to(dtype)
        if self._compute_stress:
            results["stress"] = out["stress"].detach().to(dtype)
        if not all(usable):
            bad = ~torch.as_tensor(usable, device=device)
            results["energy"] = results["energy"].masked_fill(bad, float("nan"))
            if "forces" in results:
                results["forces"] = results["forces"].masked_fill(bad[node_graph][:, None], float("nan"))
            if "stress" in results:
                results["stress"] = results["stress"].masked_fill(bad[:, None, None], float("nan"))
        return results


def _per_system(state: SimState, name: str, num: int) -> list[float | None] | None:
    """Total charge or spin per structure, where the state carries them (TorchSim 0.3 has neither)."""
    value = getattr(state, name, None)
    if value is None:
        return None
    return [float(v) for v in torch.as_tensor(value).reshape(-1).expand(num).tolist()]
