"""ASE calculator for mlip models, and the skin neighbour list it (and the batched relaxer) reuses.

    from mlip_cli import MLIPCalculator
    atoms.calc = MLIPCalculator("run/best.pt", device="cpu", dtype="float64")  # or a model object
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()
    atoms.calc.get_property("forces_uncertainty")  # ensembles only: per-atom spread of the members' forces

Units and signs are ASE's: eV, eV/A, and stress in eV/A^3 as a Voigt 6-vector ``xx yy zz yz xz xy`` with
``sigma = (1/V) dE/d(strain)`` (positive under tension, the sign ``ase.Atoms.get_stress`` uses).

Neighbour list with a skin: the list is built at ``cutoff + skin`` and kept while the cell, pbc and atomic
numbers are unchanged and no atom moved more than ``skin / 2`` since it was built (then every pair now
closer than ``cutoff`` was closer than ``cutoff + skin`` at build time, so none is missing). Each call keeps
only the listed pairs closer than ``cutoff``; the model's envelope is exactly zero beyond the cutoff
(:class:`mlip_cli.nn.radial.PolynomialEnvelope`), so pairs outside it would change nothing but the cost.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from mlip_datasets.graph import Batch, unlabelled_batch
from mlip_datasets.neighbors import neighbor_list
from mlip_datasets.record import is_periodic, stress_to_voigt

from .checkpoint import load_model, resolve_dtype
from .models import is_ensemble

__all__ = ["MLIPCalculator", "SkinNeighborList", "DEFAULT_SKIN", "ENSEMBLE_PROPERTIES", "single_batch"]

#: Default skin in Angstrom: the list is rebuilt once some atom has moved 0.25 A (tens of MD steps).
DEFAULT_SKIN = 0.5

#: Extra results of an ensemble model (MLIPCalculator's docstring); the stress ones for periodic structures only.
ENSEMBLE_PROPERTIES = (
    "energy_std",
    "energy_members",
    "forces_std",
    "forces_uncertainty",
    "forces_members",
    "stress_std",
    "stress_members",
)


class SkinNeighborList:
    """A neighbour list of one structure, reused while it is still valid (module docstring).

    Args:
        cutoff: the model's cutoff (A).
        skin: extra radius (A); 0 rebuilds on every position change.
    """

    def __init__(self, cutoff: float, skin: float = DEFAULT_SKIN):
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.builds = 0  # how many times the list was (re)built; tests and benchmarks read it
        self._key: tuple | None = None
        self._ref: np.ndarray | None = None
        self._src = self._dst = self._shifts = None

    def _valid(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray) -> bool:
        if self._ref is None or self._ref.shape != positions.shape:
            return False
        key_cell, key_pbc, key_numbers = self._key
        if not (
            np.array_equal(cell, key_cell) and np.array_equal(pbc, key_pbc) and np.array_equal(numbers, key_numbers)
        ):
            return False
        if self.skin == 0:
            return np.array_equal(positions, self._ref)
        moved2 = np.einsum("ij,ij->i", positions - self._ref, positions - self._ref)
        return bool(moved2.max(initial=0.0) <= (0.5 * self.skin) ** 2)

    def skin_edges(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray):
        """The list at ``cutoff + skin``, rebuilt first if it is no longer valid at ``positions``.

        Returns ``(src, dst, shifts)`` int64 arrays; :attr:`reference` holds the positions it was built at.
        """
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64)
        if not self._valid(positions, cell, pbc, numbers):
            self._src, self._dst, self._shifts = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
            self._ref = positions.copy()
            self._key = (cell.copy(), np.array(pbc, dtype=bool), np.array(numbers, copy=True))
            self._shift_vectors = self._shifts.astype(np.float64) @ cell
            self.builds += 1
        return self._src, self._dst, self._shifts

    @property
    def reference(self) -> np.ndarray | None:
        """Positions ``(N, 3)`` at the last build (None before the first)."""
        return self._ref

    def edges(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray):
        """Pairs closer than ``cutoff`` at ``positions``: ``(src, dst, shifts)`` int64 arrays.

        Shapes:
            positions (N, 3), cell (3, 3), pbc (3,), numbers (N,) -> src (E,), dst (E,), shifts (E, 3).
        """
        positions = np.asarray(positions, dtype=np.float64)
        src, dst, shifts = self.skin_edges(positions, cell, pbc, numbers)
        if self.skin == 0:
            return src, dst, shifts
        vec = positions[dst] - positions[src] + self._shift_vectors
        keep = np.einsum("ij,ij->i", vec, vec) < self.cutoff**2
        return src[keep], dst[keep], shifts[keep]


def single_batch(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    charge: float | None = None,
    spin: float | None = None,
) -> Batch:
    """A :class:`~mlip_datasets.graph.Batch` of one structure without labels (what a model call needs).

    Shapes:
        numbers (N,), positions (N, 3), cell (3, 3), pbc (3,), edges ``(src (E,), dst (E,), shifts (E, 3))``.
    """
    src, dst, shifts = edges

    def real(x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float64), device=device).to(dtype)

    return unlabelled_batch(
        numbers=torch.as_tensor(np.asarray(numbers, dtype=np.int64), device=device),
        positions=real(positions),
        cell=real(cell),
        pbc=torch.as_tensor(np.asarray(pbc, dtype=bool), device=device),
        edge_index=torch.as_tensor(np.stack([src, dst]), device=device),
        shifts=real(shifts),
        node_graph=torch.zeros(len(numbers), dtype=torch.long, device=device),
        charge=[charge],
        spin=[spin],
    )


class MLIPCalculator(Calculator):
    """ASE calculator around an mlip model (any family).

    Args:
        model: a :class:`mlip_cli.models.Potential` (put in eval mode and moved to ``device``/``dtype``), or the
            path (``str`` or ``os.PathLike``) of a checkpoint or run directory, loaded with its EMA weights by
            :func:`mlip_cli.checkpoint.load_model` (:meth:`from_checkpoint` also takes ``use_ema``).
        device: ``"cpu"``, ``"cuda"``, ... (default: where the model is; ``"cpu"`` for a path).
        dtype: ``"float32"``/``"float64"`` or a torch dtype (default: the model's).
        skin: neighbour-list skin in A (module docstring); 0 rebuilds the list whenever positions change.
        charge_key, spin_key: ``atoms.info`` keys of the total charge and spin multiplicity; they go on the
            batch (``charge``/``spin`` with masks) for models that use them.
        always_stress: compute the stress of periodic structures on every call, not only when asked (saves a
            second model call when energy/forces and stress are requested one after the other).

    Results: ``energy`` and ``free_energy`` (eV, equal: the model has no electronic entropy), ``forces``
    ``(N, 3)`` eV/A, ``stress`` Voigt 6-vector eV/A^3 (periodic structures only; asking for the stress of a
    non-periodic structure raises :class:`PropertyNotImplementedError`, as ASE's own calculators do).

    With an ensemble (``model.ensemble: K``) ``energy``/``forces``/``stress`` are the members' mean, and the
    results (and ``implemented_properties``, so ``calc.get_property(name, atoms)`` works) add the spread, as
    population standard deviations over members: ``energy_std`` (eV), ``energy_members`` ``(K,)`` eV,
    ``forces_std`` ``(N, 3)`` per component, ``forces_uncertainty`` ``(N,)`` per atom
    ``sqrt(mean_k |F_k - F|^2)`` (eV/A, rotation invariant), ``forces_members`` ``(K, N, 3)``, and for
    periodic structures ``stress_std`` and ``stress_members`` ``(K, 6)`` in the Voigt order of ``stress``.

    A new calculation runs only when positions, cell, pbc, atomic numbers or the charge/spin in
    ``atoms.info`` changed (other ``info`` keys do not reach the model).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        skin: float = DEFAULT_SKIN,
        charge_key: str = "charge",
        spin_key: str = "spin",
        always_stress: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(model, (str, os.PathLike)):  # MACECalculator("x.model") style
            model = load_model(model, device=device or "cpu", dtype=dtype)
        param = next(iter(model.parameters()), None)
        self.device = (
            torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
        )
        self.dtype = resolve_dtype(dtype, getattr(model, "dtype", torch.float32))
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.cutoff = float(model.cutoff)
        self.neighbors = SkinNeighborList(self.cutoff, skin)
        self.charge_key, self.spin_key = charge_key, spin_key
        self.always_stress = bool(always_stress)
        self.model_calls = 0
        self._info_state: tuple | None = None
        self._warned_charge_spin = False
        self._uses_charge_spin = bool(getattr(model.config, "charge_spin", False))
        if is_ensemble(model):
            self.implemented_properties = [*type(self).implemented_properties, *ENSEMBLE_PROPERTIES]

    def _warn_if_charge_spin_ignored(self, charge, spin) -> None:
        """Say once that a model trained without charge and spin ignores the charged or open-shell state given."""
        given = (charge is not None and float(charge) != 0.0) or (spin is not None and float(spin) != 1.0)
        if given and not self._warned_charge_spin and not self._uses_charge_spin:
            self._warned_charge_spin = True
            warnings.warn(
                f"this model was trained without charge and spin: charge {charge}, spin {spin} of this structure "
                "are ignored (its prediction is the one for any charge and spin)",
                UserWarning,
                stacklevel=3,
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        use_ema: bool = True,
        **kwargs,
    ) -> MLIPCalculator:
        """Load the model of a checkpoint (or run directory) with :func:`mlip_cli.checkpoint.load_model`.

        Args:
            path: ``.pt`` file, or a run directory (``best.pt``, else ``last.pt``).
            device: ``"cpu"`` or ``"cuda"`` (or any torch device).
            dtype: ``"float32"``/``"float64"`` or ``torch.float32``/``torch.float64`` (default: training dtype).
            use_ema: use the EMA weights when the checkpoint has them.
            kwargs: passed to the constructor (``skin``, ``charge_key``, ...).
        """
        model = load_model(path, device=device, dtype=dtype, use_ema=use_ema)
        return cls(model, device=device, dtype=model.dtype, **kwargs)

    def _info(self, atoms) -> tuple:
        return (atoms.info.get(self.charge_key), atoms.info.get(self.spin_key))

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation: positions, numbers, cell, pbc, charge/spin.

        Replaces ASE's generic comparison (which also compares magnetic moments and charges the model never
        reads, with ``np.isclose`` calls that cost a large fraction of a small molecule's model call).
        """
        old = self.atoms
        if old is None:
            return list(all_changes)
        changes = []
        if len(old) != len(atoms) or not np.array_equal(old.numbers, atoms.numbers):
            changes.append("numbers")
        if len(old) != len(atoms) or (len(atoms) and np.abs(old.positions - atoms.positions).max() > tol):
            changes.append("positions")
        if np.abs(old.cell.array - atoms.cell.array).max() > tol:
            changes.append("cell")
        if not np.array_equal(old.pbc, atoms.pbc):
            changes.append("pbc")
        if self._info(atoms) != self._info_state:
            changes.append("info")
        return changes

    def calculate(
        self, atoms=None, properties: Sequence[str] = ("energy",), system_changes: Sequence[str] = all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        cell, pbc = atoms.cell.array, atoms.pbc
        periodic = is_periodic(cell, pbc)
        wants_stress = "stress" in properties or "stress_std" in properties or "stress_members" in properties
        if wants_stress and not periodic:
            raise PropertyNotImplementedError("stress needs a periodic cell of nonzero volume; this structure has none")
        charge, spin = self._info(atoms)
        self._info_state = (charge, spin)
        self._warn_if_charge_spin_ignored(charge, spin)
        positions = atoms.positions
        if not (np.isfinite(positions).all() and np.isfinite(cell).all()):
            # no neighbour list of NaN coordinates: answer NaN, which relax/md report as a failure
            nan = np.full((len(atoms), 3), np.nan)
            self.results = {"energy": np.nan, "free_energy": np.nan, "forces": nan}
            if periodic or wants_stress:
                self.results["stress"] = np.full(6, np.nan)
            if is_ensemble(self.model):
                members = self.model.num_members
                self.results.update(
                    energy_std=np.nan,
                    energy_members=np.full(members, np.nan),
                    forces_std=nan.copy(),
                    forces_uncertainty=np.full(len(atoms), np.nan),
                    forces_members=np.full((members, len(atoms), 3), np.nan),
                )
                if "stress" in self.results:
                    self.results.update(stress_std=np.full(6, np.nan), stress_members=np.full((members, 6), np.nan))
            return
        edges = self.neighbors.edges(positions, cell, pbc, atoms.numbers)
        batch = single_batch(atoms.numbers, positions, cell, pbc, edges, self.dtype, self.device, charge, spin)
        want_stress = periodic and (wants_stress or self.always_stress)
        out = self.model(batch, compute_forces=True, compute_stress=want_stress)
        self.model_calls += 1
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().to("cpu", torch.float64).numpy().copy(),
        }
        if want_stress:
            self.results["stress"] = stress_to_voigt(_numpy(out["stress"][0]))
        if "energy_std" in out:
            self.results.update(_ensemble_results(out, want_stress))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().copy()


def _ensemble_results(out: dict, stress: bool) -> dict:
    """The spread of an ensemble's output on one structure, as :class:`MLIPCalculator` results."""
    results = {
        "energy_std": float(out["energy_std"][0]),
        "energy_members": _numpy(out["energy_members"][:, 0]),
        "forces_std": _numpy(out["forces_std"]),
        "forces_uncertainty": _numpy(out["forces_uncertainty"]),
        "forces_members": _numpy(out["forces_members"]),
    }
    if stress:
        results["stress_std"] = stress_to_voigt(_numpy(out["stress_std"][0]))
        results["stress_members"] = np.stack([stress_to_voigt(m) for m in _numpy(out["stress_members"][:, 0])])
    return results
