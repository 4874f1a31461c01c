"""Molecular dynamics with ASE's integrators and an mlip model, with an energy-drift and speed report.

    from mlip_cli.md import run_md
    report = run_md(atoms, ensemble="nve", steps=1000, timestep_fs=1.0, temperature_K=300)  # atoms.calc set

Ensembles: ``nve`` (velocity Verlet, :class:`ase.md.verlet.VelocityVerlet`), ``nvt`` (Langevin,
:class:`ase.md.langevin.Langevin`), ``npt`` (isotropic Martyna-Tobias-Klein with Nose-Hoover chains,
:class:`ase.md.nose_hoover_chain.IsotropicMTKNPT`; fully periodic cells only).

Guards: the run stops with :class:`MDFailure` (the offending frame is never written, the frames before it are
kept) when the energy, a force, a position or a momentum is NaN/inf, a force exceeds ``max_force``, the
instantaneous temperature exceeds ``max_temperature`` (default ``max(10 x target, 10 x initial, 5000 K)``) or an
atom would move more than ``max_displacement`` (default 0.5 A) in one step (speed x time step). A structure
with no atoms or with every atom fixed is refused (:class:`~mlip_cli.errors.UsageError`); a single free atom
runs (zero force, at rest after the centre-of-mass motion is removed, or thermalised by NVT).

Watches (neither stops the run unless asked): a bond-topology change (:class:`~mlip_cli.topology.TopologyMonitor`:
an atom farther than 2 A from every other, or a covalent bond stretched beyond 1.5x its starting length) every
``topology_interval`` steps, reported once in one line and recorded in the report, and ended there with
``stop_on_topology_change``; with an ensemble model (a calculator that returns ``forces_uncertainty``, the
per-atom force uncertainty), the largest per-atom uncertainty of every step, logged and recorded, and the run
ends at the first step above ``max_uncertainty`` with that frame written to ``uncertain_frames``. Both ends are
normal ends (the report's ``stop_reason`` says why), not :class:`MDFailure`: the frames up to and including that
step are written as usual.

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
from .topology import TopologyChange, TopologyMonitor

__all__ = [
    "ENSEMBLES",
    "MDReport",
    "MDFailure",
    "make_dynamics",
    "run_md",
    "out_of_range",
    "energy_drift",
    "temperature",
]

ENSEMBLES = ("nve", "nvt", "npt")

# Every 10 steps: a neighbour search per check costs about as much as a tenth of a model call on a small
# molecule (less on large cells), and a departing atom or a breaking bond takes far more than 10 steps.
TOPOLOGY_INTERVAL = 10

# Physical-range limits (see run_md). 0.5 A per step is a third of a typical bond: an H atom at 5000 K moves
# ~0.1 A/fs and Cu at 300 K ~0.003 A/fs, so any sound time step stays far below it, while a step that moves
# an atom this far cannot resolve the interaction and the integration has already failed.
MAX_DISPLACEMENT_A = 0.5
# 1000 eV/A: orders of magnitude above the forces of thermal motion; only a blown-up model or collapsed pair gets there
MAX_FORCE_EV_A = 1000.0
# The temperature limit is max(10 x target, 10 x initial, MIN_MAX_TEMPERATURE_K): above the boiling point
# of nearly every element, out of any training set, and a 10x rise is a blow-up, not equilibration.
MIN_MAX_TEMPERATURE_K = 5000.0


class MDFailure(RuntimeError):
    """The simulation left the physical range (NaN/inf, force, temperature or displacement per step over its
    limit); the one-line message names the step, the quantity and the limit."""


@dataclass
class MDReport:
    """Summary of a run (all energies per atom).

    Attributes:
        energy_drift: slope of the total energy per atom against time, eV/atom/ps.
        max_energy_deviation: largest ``|E(t) - E(0)|`` per atom, eV/atom.
        steps_per_second, ns_per_day: speed over the whole run (integrator, model and I/O).
        steps: the steps run (fewer than asked when the run was ended on request, see ``stop_reason``).
        topology_change_step, topology_change_time_ps, topology_change: the first check that found a
            bond-topology change (None if none did).
        max_force_uncertainty: the largest per-atom force uncertainty over all steps, eV/A (None for a
            model without uncertainty).
        stop_reason: why the run ended before ``steps`` (a topology change or an uncertainty above the
            threshold, when asked to stop there), else None.
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
    topology_change_step: int | None = None
    topology_change_time_ps: float | None = None
    topology_change: TopologyChange | None = None
    max_force_uncertainty: float | None = None
    stop_reason: str | None = None

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


def temperature(atoms) -> float:
    """Instantaneous temperature in K (0 when nothing can move, where ASE's ``get_temperature`` divides by 0)."""
    from ase import units

    dof = atoms.get_number_of_degrees_of_freedom()
    return float(2 * atoms.get_kinetic_energy() / (dof * units.kB)) if dof > 0 else 0.0


def out_of_range(atoms, dt: float, max_force: float, max_temperature: float, max_displacement: float) -> str | None:
    """What has left the physical range in this frame, or ``None``: ``atoms`` with momenta and a calculator
    (its energy and forces are read only once the positions are finite), time step ``dt`` in ASE units. The
    checks of :func:`run_md`, for other integrators too (``benchmarks/bench_stability.py`` runs TorchSim
    replicas through them with a ``SinglePointCalculator``)."""
    for name, value in (("positions", atoms.positions), ("momenta", atoms.get_momenta())):
        if not np.isfinite(value).all():
            return f"the {name} became NaN/inf (the integration blew up)"
    if not np.isfinite(atoms.get_potential_energy()):
        return "the model's energy is NaN/inf"
    forces = atoms.get_forces()
    if not np.isfinite(forces).all():
        return "the model's forces are NaN/inf"
    fmax = float(np.linalg.norm(forces, axis=1).max())
    if fmax > max_force:
        return f"max force {fmax:.4g} eV/A is above the limit {max_force:g} eV/A"
    temp = temperature(atoms)
    if temp > max_temperature:
        return (
            f"temperature {temp:.4g} K is above the limit {max_temperature:g} K"
            " (time step too large or the model unstable here)"
        )
    move = float(np.linalg.norm(atoms.get_velocities(), axis=1).max() * dt)  # speed in A per ASE time unit
    if move > max_displacement:
        return (
            f"an atom moves {move:.3g} A per step, above the limit {max_displacement:g} A"
            " (time step too large or the model unstable here)"
        )
    return None


def initialize_velocities(atoms, temperature_K: float, seed: int = 0) -> None:
    """Maxwell-Boltzmann velocities at ``temperature_K``, zero total momentum (and rotation for molecules).

    The drawn temperature is restored after the centre-of-mass motion (and rotation) is removed, as ASE's
    ``Stationary`` does, except when nothing is left to rescale: one free atom is simply at rest (ASE would
    divide 0 by 0 and set NaN momenta).
    """
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    try:  # ASE >= 3.29; MaxwellBoltzmannDistribution is its deprecated older name
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    drawn = temperature(atoms)
    Stationary(atoms, preserve_temperature=False)
    if not atoms.pbc.any() and len(atoms) > 2:
        ZeroRotation(atoms, preserve_temperature=False)
    left = temperature(atoms)
    if drawn > 0 and left > 1e-12 * drawn:  # both removals are linear in the momenta: rescaling commutes
        atoms.set_momenta(atoms.get_momenta() * np.sqrt(drawn / left))
    else:
        atoms.set_momenta(np.zeros((len(atoms), 3)))


class _EndRun(Exception):
    """Raised by an observer to end the run at this step on request (not a failure)."""


class _UncertaintyLogger:
    """ASE's ``MDLogger`` (energies per atom) with one more column: the step's largest per-atom force
    uncertainty, eV/A (``MaxFUnc[eV/A]``)."""

    def __init__(self, dyn, atoms, path, uncertainty: Callable[[], float]):
        from ase.md import MDLogger

        self.logger = MDLogger(dyn, atoms, str(path), header=False, peratom=True, mode="w")
        self.uncertainty = uncertainty
        self.base_fmt = self.logger.fmt.rstrip("\n")
        self.logger.logfile.write(f"{self.logger.hdr}  {'MaxFUnc[eV/A]':>14}\n")

    def __call__(self) -> None:
        # MDLogger formats ``fmt % values``: the extra column goes in as literal text of this step
        self.logger.fmt = self.base_fmt + f"  {self.uncertainty():14.5f}\n"
        self.logger()

    def close(self) -> None:
        self.logger.close()


def _write_uncertain_frame(path: Path, atoms, uncertainty: np.ndarray, step: int, time_ps: float) -> None:
    """The frame that crossed the uncertainty threshold, extended XYZ, with its energy and forces, the
    per-atom ``forces_uncertainty`` array and ``step``, ``time_ps``, ``max_forces_uncertainty`` in info."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    frame.arrays["forces_uncertainty"] = np.asarray(uncertainty, dtype=np.float64)
    frame.info.update(step=step, time_ps=time_ps, max_forces_uncertainty=float(np.max(uncertainty)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, frame, format="extxyz")


class _Writer:
    """Trajectory output: ``.traj`` through ASE's Trajectory, anything else as extended XYZ."""

    def __init__(self, path: Path, atoms):
        self.atoms, self.path = atoms, Path(path)
        self._traj = self._fh = None  # opened at the first frame: a run stopped at step 0 leaves no file

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ".traj":
            from ase.io import Trajectory

            self._traj = Trajectory(str(self.path), "w", self.atoms)
        else:
            self._fh = open(self.path, "w")  # noqa: SIM115 (open for the whole run; closed in close())

    def __call__(self) -> None:
        if self._traj is None and self._fh is None:
            self._open()
        if self._traj is not None:
            self._traj.write(self.atoms)
        else:
            from ase.io import write

            write(self._fh, self.atoms, format="extxyz")
            self._fh.flush()

    def close(self) -> None:
        for handle in (self._traj, self._fh):
            if handle is not None:
                handle.close()


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
    max_force: float = MAX_FORCE_EV_A,
    max_temperature: float | None = None,
    max_displacement: float = MAX_DISPLACEMENT_A,
    topology_interval: int = TOPOLOGY_INTERVAL,
    topology_monitor: TopologyMonitor | None = None,
    stop_on_topology_change: bool = False,
    max_uncertainty: float | None = None,
    uncertain_frames: str | Path | None = None,
    notify: Callable[[str], None] | None = None,
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
        log: ASE ``MDLogger`` file (time, energies per atom, temperature) every ``log_interval`` steps; with an
            ensemble model one more column, ``MaxFUnc[eV/A]``: the step's largest per-atom force uncertainty.
        max_force: stop with :class:`MDFailure` if a force exceeds this (eV/A) or anything becomes NaN; the bad
            frame is never written (the frames before it are).
        max_temperature: stop if the instantaneous temperature exceeds this, K (default
            ``max(10 x temperature_K, 10 x the initial temperature, 5000 K)``).
        max_displacement: stop if an atom would move more than this in one step (speed x time step), A.
        topology_interval: check the bond topology against the starting structure every this many steps
            (0: never); the first change is reported through ``notify`` and in the report.
        topology_monitor: the reference topology and criteria (default: ``TopologyMonitor(atoms)``, the
            structure as given, the default criteria).
        stop_on_topology_change: end the run at the first topology change.
        max_uncertainty: end the run at the first step whose largest per-atom force uncertainty exceeds this,
            eV/A (needs a calculator that returns ``forces_uncertainty``: an ensemble model; else
            :class:`~mlip_cli.errors.UsageError`).
        uncertain_frames: where that step's frame goes (extended XYZ with ``forces_uncertainty`` per atom;
            required with ``max_uncertainty``).
        notify: called with one line when something is found that does not stop the run by itself (the first
            topology change) or ends it on request.
        progress: called with the number of steps done (every ``log_interval`` steps).
    """
    from ase import units

    if steps < 0 or timestep_fs <= 0:
        raise UsageError(f"need steps >= 0 and a positive time step, got {steps} and {timestep_fs} fs")
    if not (max_displacement > 0 and (max_temperature is None or max_temperature > 0)):
        raise UsageError(f"need positive limits, got {max_temperature} K and {max_displacement} A per step")
    if topology_interval < 0:
        raise UsageError(f"need a topology check interval >= 0 steps, got {topology_interval}")
    if max_uncertainty is not None and not max_uncertainty > 0:
        raise UsageError(f"need a positive uncertainty threshold, got {max_uncertainty} eV/A")
    if max_uncertainty is not None and uncertain_frames is None:
        raise UsageError("max_uncertainty needs a file for the frame that crosses it (uncertain_frames)")
    if len(atoms) == 0:
        raise UsageError("the structure has no atoms")
    if atoms.get_number_of_degrees_of_freedom() <= 0:
        raise UsageError(f"nothing can move: all {len(atoms)} atoms are fixed")
    if init_velocities is None:
        init_velocities = not np.any(atoms.get_momenta())
    if init_velocities and temperature_K > 0:
        initialize_velocities(atoms, temperature_K, seed)
    if max_temperature is None:
        t0 = temperature(atoms)
        t0 = 10 * t0 if np.isfinite(t0) else 0.0  # NaN momenta are caught at step 0
        max_temperature = max(10 * temperature_K, t0, MIN_MAX_TEMPERATURE_K)
    dt = timestep_fs * units.fs
    dyn = make_dynamics(
        atoms, ensemble, timestep_fs, temperature_K, friction_per_fs, pressure_GPa, tdamp_fs, pdamp_fs, seed
    )
    n = len(atoms)
    times, energies, temps = [], [], []
    calc = atoms.calc
    calls0 = getattr(calc, "model_calls", 0)
    builds0 = getattr(getattr(calc, "neighbors", None), "builds", 0)
    # the step-0 forces (cached: the integrator reuses them) say whether the model gives an uncertainty
    atoms.get_forces()
    has_uncertainty = _force_uncertainty(atoms) is not None
    if max_uncertainty is not None and not has_uncertainty:
        raise UsageError(
            "a maximum force uncertainty needs an ensemble model (model.ensemble > 1); this one has no uncertainty"
        )
    uncertainties: list[float] = []
    monitor = None
    if topology_interval > 0:
        monitor = topology_monitor if topology_monitor is not None else TopologyMonitor(atoms)
    found: dict = {}

    def when(step: int) -> str:
        return f"step {step} ({step * timestep_fs / 1000.0:.4g} ps)"

    def record() -> None:
        # first observer: checks before anything writes the frame
        step = dyn.nsteps
        problem = out_of_range(atoms, dt, max_force, max_temperature, max_displacement)
        if problem is not None:
            raise MDFailure(f"step {step}: {problem}")
        epot = atoms.get_potential_energy()
        temp = temperature(atoms)
        times.append(step * timestep_fs / 1000.0)
        energies.append((epot + atoms.get_kinetic_energy()) / n)
        temps.append(temp)
        if has_uncertainty:
            per_atom = _force_uncertainty(atoms)
            worst = float(per_atom.max()) if per_atom is not None and len(per_atom) else float("nan")
            uncertainties.append(worst)
            if max_uncertainty is not None and not worst <= max_uncertainty:
                found["uncertain"] = (step, per_atom, worst)
        if progress is not None and step % max(log_interval, 1) == 0:
            progress(step)

    def check_topology() -> None:
        if "topology" in found:
            return  # the first change is the one reported
        change = monitor.check(atoms)
        if change is not None:
            found["topology"] = (dyn.nsteps, change)
            if notify is not None and not stop_on_topology_change:
                notify(f"{when(dyn.nsteps)}: {change.description}")

    def end_on_request() -> None:
        # last observer: the frame of this step is written and logged before the run ends
        step = dyn.nsteps
        if "uncertain" in found:
            _, per_atom, worst = found["uncertain"]
            _write_uncertain_frame(Path(uncertain_frames), atoms, per_atom, step, step * timestep_fs / 1000.0)
            raise _EndRun(
                f"{when(step)}: max force uncertainty {worst:.4g} eV/A is above {max_uncertainty:g} eV/A"
                f" (frame written to {uncertain_frames})"
            )
        if stop_on_topology_change and "topology" in found:
            raise _EndRun(f"{when(step)}: {found['topology'][1].description}")

    dyn.attach(record, interval=1)
    if monitor is not None:
        dyn.attach(check_topology, interval=topology_interval)
    writer = None
    logger = None
    stop_reason = None
    steps_run = steps
    try:
        if trajectory is not None:
            writer = _Writer(Path(trajectory), atoms)
            dyn.attach(writer, interval=max(traj_interval, 1))
        if log is not None:
            if has_uncertainty:
                logger = _UncertaintyLogger(dyn, atoms, log, lambda: uncertainties[-1])
            else:
                from ase.md import MDLogger

                logger = MDLogger(dyn, atoms, str(log), header=True, peratom=True, mode="w")
            dyn.attach(logger, interval=max(log_interval, 1))
        dyn.attach(end_on_request, interval=1)
        start = time.perf_counter()
        try:
            dyn.run(steps)
        except _EndRun as end:
            stop_reason, steps_run = str(end), dyn.nsteps
            if notify is not None:
                notify(f"stopped at {stop_reason}")
        seconds = time.perf_counter() - start
    finally:
        if writer is not None:
            writer.close()
        if logger is not None:
            logger.close()
    if progress is not None:
        progress(steps_run)
    e = np.asarray(energies)
    rate = steps_run / seconds if seconds > 0 else float("inf")
    topology_step, change = found.get("topology", (None, None))
    return MDReport(
        ensemble=ensemble.lower(),
        natoms=n,
        steps=steps_run,
        timestep_fs=timestep_fs,
        seconds=seconds,
        steps_per_second=rate,
        ns_per_day=rate * timestep_fs * 86400 / 1e6,
        energy_drift=energy_drift(np.asarray(times), e),
        max_energy_deviation=float(np.abs(e - e[0]).max()) if len(e) else 0.0,
        mean_temperature=float(np.mean(temps)) if temps else 0.0,
        final_temperature=temperature(atoms),
        model_calls=getattr(calc, "model_calls", 0) - calls0,
        neighbor_builds=getattr(getattr(calc, "neighbors", None), "builds", 0) - builds0,
        topology_change_step=topology_step,
        topology_change_time_ps=None if topology_step is None else topology_step * timestep_fs / 1000.0,
        topology_change=change,
        max_force_uncertainty=float(np.nanmax(uncertainties)) if uncertainties else None,
        stop_reason=stop_reason,
    )


def _force_uncertainty(atoms) -> np.ndarray | None:
    """The per-atom force uncertainty of the last calculation (``forces_uncertainty`` in the calculator's
    results: ensemble models), or None."""
    value = getattr(atoms.calc, "results", {}).get("forces_uncertainty")
    return None if value is None else np.asarray(value, dtype=np.float64).reshape(-1)
