"""Molecular dynamics with ASE's integrators and an mlip model, with an energy-drift and speed report.

    from mlip_cli.md import run_md
    report = run_md(atoms, ensemble="nve", steps=1000, timestep_fs=1.0, temperature_K=300)  # atoms.calc set

Ensembles: ``nve`` (velocity Verlet, :class:`ase.md.verlet.VelocityVerlet`), ``nvt`` (Langevin,
:class:`ase.md.langevin.Langevin`), ``npt`` (isotropic Martyna-Tobias-Klein with Nose-Hoover chains,
:class:`ase.md.nose_hoover_chain.IsotropicMTKNPT`; fully periodic cells only).

The report's energy drift is the slope of a least-squares line through the total energy per atom against
time, in eV/atom/ps (the conserved quantity only in NVE); speed is steps per wall-clock second and ns/day.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError

__all__ = ["ENSEMBLES", "MDReport", "MDFailure", "make_dynamics", "run_md", "energy_drift"]

ENSEMBLES = ("nve", "nvt", "npt")


class MDFailure(RuntimeError):
    """The simulation produced NaN/inf or exploding forces; the message names the step."""


@dataclass
class MDReport:
    """Summary of a run (all energies per atom).

    Attributes:
        energy_drift: slope of the total energy per atom against time, eV/atom/ps.
        max_energy_deviation: largest ``|E(t) - E(0)|`` per atom, eV/atom.
        steps_per_second, ns_per_day: speed over the whole run (integrator, model and I/O).
    """

    ensemble: str
    natoms: int
    steps: int
    timestep_fs: float
    seconds: float
    steps_per_second: float
    ns_per_day: float
    energy_drift: float
    max_energy_deviation: float
    mean_temperature: float
    final_temperature: float
    model_calls: int
    neighbor_builds: int

    def as_dict(self) -> dict:
        return asdict(self)


def energy_drift(times_ps: np.ndarray, energies: np.ndarray) -> float:
    """Least-squares slope of ``energies`` against ``times_ps`` (0 with fewer than two points)."""
    t, e = np.asarray(times_ps, dtype=np.float64), np.asarray(energies, dtype=np.float64)
    if len(t) < 2:
        return 0.0
    return float(np.polyfit(t, e, 1)[0])


def make_dynamics(
    atoms,
    ensemble: str,
    timestep_fs: float,
    temperature_K: float = 300.0,
    friction_per_fs: float = 0.01,
    pressure_GPa: float = 0.0,
    tdamp_fs: float | None = None,
    pdamp_fs: float | None = None,
    seed: int = 0,
):
    """The ASE integrator for ``ensemble`` (``nve``, ``nvt``, ``npt``).

    Args:
        timestep_fs: time step in fs.
        temperature_K: target temperature (NVT, NPT).
        friction_per_fs: Langevin friction in 1/fs (NVT).
        pressure_GPa: target pressure (NPT).
        tdamp_fs, pdamp_fs: thermostat and barostat time constants (NPT; default 100 and 1000 time steps).
        seed: random seed of the Langevin noise.
    """
    from ase import units

    ensemble = ensemble.lower()
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        # fixcm=False: ASE's fixcm=True does not sample NVT exactly (deprecated since ASE 3.28)
        return Langevin(
            atoms,
            timestep=dt,
            temperature_K=temperature_K,
            friction=friction_per_fs / units.fs,
            fixcm=False,
            rng=np.random.default_rng(seed),
        )
    if ensemble == "npt":
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        if not atoms.pbc.all() or atoms.cell.rank != 3:
            raise UsageError("NPT needs a structure periodic along x, y and z with a full cell")
        tdamp = (tdamp_fs if tdamp_fs is not None else 100 * timestep_fs) * units.fs
        pdamp = (pdamp_fs if pdamp_fs is not None else 1000 * timestep_fs) * units.fs
        return IsotropicMTKNPT(
            atoms,
            timestep=dt,
            temperature_K=temperature_K,
            pressure_au=pressure_GPa * units.GPa,
            tdamp=tdamp,
            pdamp=pdamp,
        )
    raise UsageError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}")


def initialize_velocities(atoms, temperature_K: float, seed: int = 0) -> None:
    """Maxwell-Boltzmann velocities at ``temperature_K``, zero total momentum (and rotation for molecules)."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    try:  # ASE >= 3.29; MaxwellBoltzmannDistribution is its deprecated older name
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any() and len(atoms) > 2:
        ZeroRotation(atoms)


class _Writer:
    """Trajectory output: ``.traj`` through ASE's Trajectory, anything else as extended XYZ."""

    def __init__(self, path: Path, atoms):
        self.atoms, self.path = atoms, Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ".traj":
            from ase.io import Trajectory

            self._traj, self._fh = Trajectory(str(self.path), "w", atoms), None
        else:
            self._traj, self._fh = None, open(self.path, "w")  # noqa: SIM115 (open for the whole run; closed in close())

    def __call__(self) -> None:
        if self._traj is not None:
            self._traj.write(self.atoms)
        else:
            from ase.io import write

            write(self._fh, self.atoms, format="extxyz")
            self._fh.flush()

    def close(self) -> None:
        (self._traj or self._fh).close()


def run_md(
    atoms,
    ensemble: str = "nve",
    steps: int = 1000,
    timestep_fs: float = 1.0,
    temperature_K: float = 300.0,
    *,
    friction_per_fs: float = 0.01,
    pressure_GPa: float = 0.0,
    tdamp_fs: float | None = None,
    pdamp_fs: float | None = None,
    seed: int = 0,
    init_velocities: bool | None = None,
    trajectory: str | Path | None = None,
    traj_interval: int = 10,
    log: str | Path | None = None,
    log_interval: int = 10,
    max_force: float = 1000.0,
    progress: Callable[[int], None] | None = None,
) -> MDReport:
    """Run MD on ``atoms`` (its calculator set, usually :class:`~mlip_cli.calculator.MLIPCalculator`).

    Args:
        ensemble, timestep_fs, temperature_K, friction_per_fs, pressure_GPa, tdamp_fs, pdamp_fs, seed:
            see :func:`make_dynamics`.
        steps: number of integration steps.
        init_velocities: draw Maxwell-Boltzmann velocities at ``temperature_K`` (default: when the atoms have
            no momenta yet).
        trajectory: write a frame every ``traj_interval`` steps (``.traj``, else extended XYZ).
        log: ASE ``MDLogger`` file (time, energies per atom, temperature) every ``log_interval`` steps.
        max_force: stop with :class:`MDFailure` if a force exceeds this (eV/A) or anything becomes NaN; the bad
            frame is never written.
        progress: called with the number of steps done (every ``log_interval`` steps).
    """
    if steps < 0 or timestep_fs <= 0:
        raise UsageError(f"need steps >= 0 and a positive time step, got {steps} and {timestep_fs} fs")
    if init_velocities is None:
        init_velocities = not np.any(atoms.get_momenta())
    if init_velocities and temperature_K > 0:
        initialize_velocities(atoms, temperature_K, seed)
    dyn = make_dynamics(
        atoms, ensemble, timestep_fs, temperature_K, friction_per_fs, pressure_GPa, tdamp_fs, pdamp_fs, seed
    )
    n = len(atoms)
    times, energies, temps = [], [], []

    def record() -> None:
        # first observer: checks before anything writes the frame
        epot = atoms.get_potential_energy()
        forces = atoms.get_forces()
        step = dyn.nsteps
        if not (np.isfinite(epot) and np.isfinite(forces).all() and np.isfinite(atoms.positions).all()):
            raise MDFailure(f"energy or forces became NaN/inf at step {step}")
        fmax = float(np.linalg.norm(forces, axis=1).max()) if n else 0.0
        if fmax > max_force:
            raise MDFailure(f"forces exploded at step {step} (max |F| = {fmax:.3g} eV/A > {max_force:g})")
        times.append(step * timestep_fs / 1000.0)
        energies.append((epot + atoms.get_kinetic_energy()) / n)
        temps.append(atoms.get_temperature())
        if progress is not None and step % max(log_interval, 1) == 0:
            progress(step)

    dyn.attach(record, interval=1)
    writer = None
    logger = None
    try:
        if trajectory is not None:
            writer = _Writer(Path(trajectory), atoms)
            dyn.attach(writer, interval=max(traj_interval, 1))
        if log is not None:
            from ase.md import MDLogger

            logger = MDLogger(dyn, atoms, str(log), header=True, peratom=True, mode="w")
            dyn.attach(logger, interval=max(log_interval, 1))
        calc = atoms.calc
        calls0 = getattr(calc, "model_calls", 0)
        builds0 = getattr(getattr(calc, "neighbors", None), "builds", 0)
        start = time.perf_counter()
        dyn.run(steps)
        seconds = time.perf_counter() - start
    finally:
        if writer is not None:
            writer.close()
        if logger is not None:
            logger.close()
    if progress is not None:
        progress(steps)
    e = np.asarray(energies)
    rate = steps / seconds if seconds > 0 else float("inf")
    return MDReport(
        ensemble=ensemble.lower(),
        natoms=n,
        steps=steps,
        timestep_fs=timestep_fs,
        seconds=seconds,
        steps_per_second=rate,
        ns_per_day=rate * timestep_fs * 86400 / 1e6,
        energy_drift=energy_drift(np.asarray(times), e),
        max_energy_deviation=float(np.abs(e - e[0]).max()) if len(e) else 0.0,
        mean_temperature=float(np.mean(temps)) if temps else 0.0,
        final_temperature=float(atoms.get_temperature()),
        model_calls=getattr(calc, "model_calls", 0) - calls0,
        neighbor_builds=getattr(getattr(calc, "neighbors", None), "builds", 0) - builds0,
    )
