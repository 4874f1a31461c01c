"""MD stability: time to the first bond-topology change under NVT Langevin, per model, temperature and seed.

    .venv/bin/python benchmarks/bench_stability.py --system acac \\
        --model tdn=runs/acac-tdn-medium --model gaunt=runs/acac-gaunt-medium \\
        --mace mace=runs/mace-acac/model.model --max-ps 50
    .venv/bin/python benchmarks/bench_stability.py --system acac --model tdn=tiny.pt --max-ps 0.05 \\
        --seeds 1 --json /tmp/smoke.json        # smoke mode: a few dozen steps per run

Protocol (the same for every arm, issue 17): start from the first frame of the system's file (acac:
``../shared/data/acac/test_MD_300K.xyz``; 3BPA: ``../shared/data/3bpa/train_300K.xyz``, its standard test files
not being available here), Maxwell-Boltzmann velocities at the target temperature, ASE Langevin (friction
0.01/fs) at 0.5 fs in float64, seeds 0..N-1 (velocities and noise), for each temperature (acac: 300 K and 600 K;
3BPA: 300 K). Every ``--check-every`` steps :class:`mlip_cli.topology.TopologyMonitor` compares the structure
with the start (an atom farther than 2 A from every other, or a covalent bond stretched beyond 1.5x its starting
length); the run ends at the first change, and a run that reaches ``--max-ps`` is censored there. A run stopped
by ``mlip md``'s physical-range guards (NaN, force, temperature, displacement per step) counts as an event at
that time (``event: "failure"``): the model has left the physical range, which follows or replaces a
dissociation. The acac enol proton moving from one O to the other stretches its O-H bond beyond 1.5x but is a
partner exchange (the other O now bonds it), not a break, by the detector's default; ``--strict-bonds`` counts
it too (with the acac models trained here it happens within the first picosecond at 600 K, so strict times
measure proton hopping, not stability). ``kind`` and ``description`` say what happened in each run.

Arms: ``--model NAME=CHECKPOINT`` (an mlip checkpoint or run directory, run through
:class:`~mlip_cli.calculator.MLIPCalculator` in float64) and ``--mace NAME=MODEL`` (a MACE model file). MACE runs
in its own virtual environment (``--mace-python``): this script starts itself there as a client
(``--mace-client``, which imports only ASE and mace) that serves forces over ASE's i-PI socket
(:class:`ase.calculators.socketio.SocketIOCalculator`), so both sides share one integrator, one detector and
one set of guards; only the force call differs.

``--engine torchsim`` runs each arm's seeds x temperatures as replicas of one TorchSim batch (BAOAB Langevin,
same friction and time step; :func:`run_replicas`), one model call per step for all of them instead of one per
run: the per-call overhead is shared (a large gain where calls are launch-bound, as on a GPU; a small one for the
medium models on this CPU, whose calls are mostly arithmetic). mlip models go through
:class:`mlip_cli.torchsim.MLIPModel`, MACE through TorchSim's own ``MaceModel`` in the MACE venv
(``--mace-replicas``, which imports ASE, TorchSim, mace and ``mlip_cli.md``/``topology`` only);
``--max-minutes`` censors an arm's runs after that much wall time, ``--device cuda`` runs the batch on a GPU.

Writes ``benchmarks/results/bench_stability_<system>_threads<T>.json`` (or ``--json``): one row per run
(time to the first topology change in ps, censored or not, what happened, steps/s, mean temperature) and a
summary per arm and temperature, with the machine, threads and load average (``benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
SYSTEMS = {
    # name -> (file under DATA, default temperatures in K)
    "acac": ("acac/test_MD_300K.xyz", (300.0, 600.0)),
    "3bpa": ("3bpa/train_300K.xyz", (300.0,)),
}
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
PROGRESS_STEPS = 2000  # run_replicas prints where it is every 1 ps


def mace_client(model: str, start: str, socket_name: str, threads: int) -> None:
    """The MACE side (run by the MACE venv's python): serve forces of ``model`` over the i-PI socket."""
    import torch
    from ase.calculators.socketio import SocketClient
    from ase.io import read
    from mace.calculators import MACECalculator

    torch.set_num_threads(threads)
    atoms = read(start, 0)
    atoms.calc = MACECalculator(model_paths=model, device="cpu", default_dtype="float64")
    SocketClient(unixsocket=socket_name).run(atoms, use_stress=False)


def mace_replicas(spec_json: str) -> None:
    """The MACE side of ``--engine torchsim`` (run by the MACE venv's python): :func:`run_replicas` with
    TorchSim's own MACE wrapper; the rows go to ``spec["out"]`` as JSON."""
    import json

    import torch
    from ase.io import read
    from torch_sim.models.mace import MaceModel

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    loaded = torch.load(spec["model"], map_location=spec["device"], weights_only=False)  # our own trained file
    model = MaceModel(loaded, device=torch.device(spec["device"]), dtype=torch.float64, compute_stress=False)
    rows = run_replicas(model, read(spec["start"], 0), **spec["settings"], label=spec["label"])
    Path(spec["out"]).write_text(json.dumps(rows))


def replica_settings(temperatures: list[float], args) -> dict:
    """:func:`run_replicas`'s keyword arguments from the command line (JSON-ready: the MACE process gets them too)."""
    return {
        "temperatures": temperatures,
        "replicas": args.seeds,
        "max_ps": args.max_ps,
        "check_every": args.check_every,
        "strict": args.strict_bonds,
        "seed": args.seed,
        "max_minutes": args.max_minutes,
    }


def mace_replicas_arm(name: str, model: Path, start_path: Path, settings: dict, args) -> list[dict]:
    """Run :func:`mace_replicas` in the MACE venv with :func:`replica_settings` and read its rows."""
    import json
    import os
    import subprocess
    import tempfile

    root = HERE.parent
    paths = [str(root / d) for d in (".", "datasets", "kernels")] + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "model": str(model),
            "start": str(start_path),
            "settings": settings,
            "threads": args.threads,
            "device": args.device,
            "label": f"{name} ",
            "out": str(Path(tmp) / "rows.json"),
        }
        command = [args.mace_python, __file__, "--mace-replicas", json.dumps(spec)]
        subprocess.run(command, env=env, check=True)
        return json.loads((Path(tmp) / "rows.json").read_text())


class MaceArm:
    """A MACE model served by a client process in MACE's venv; ``calc`` is the ASE socket calculator."""

    def __init__(self, model: Path, start: Path, python: str, threads: int, name: str):
        import os
        import subprocess

        from ase.calculators.socketio import SocketIOCalculator

        socket_name = f"mlip-stability-{os.getpid()}-{name}"
        self.calc = SocketIOCalculator(unixsocket=socket_name)
        command = [python, __file__, "--mace-client", str(model), str(start), socket_name, str(threads)]
        self.process = subprocess.Popen(command)

    def close(self) -> None:
        self.calc.close()
        self.process.wait(timeout=60)


def run_one(calc, start, temperature: float, seed: int, max_ps: float, check_every: int, strict: bool) -> dict:
    """One Langevin run from ``start``; the row of the JSON."""
    from mlip_cli.md import MDFailure, run_md
    from mlip_cli.topology import TopologyMonitor

    atoms = start.copy()
    atoms.calc = calc
    steps = max(1, round(max_ps * 1000.0 / TIMESTEP_FS))
    row = {"temperature_K": temperature, "seed": seed}
    begin = time.perf_counter()
    try:
        report = run_md(
            atoms,
            "nvt",
            steps=steps,
            timestep_fs=TIMESTEP_FS,
            temperature_K=temperature,
            friction_per_fs=FRICTION_PER_FS,
            seed=seed,
            init_velocities=True,
            topology_interval=check_every,
            topology_monitor=TopologyMonitor(start, partner_exchange=not strict),
            stop_on_topology_change=True,
        )
    except MDFailure as failure:  # "step N: ..." names the step the guards stopped at
        step = int(str(failure).split(":")[0].split()[1])
        row.update(event="failure", censored=False, time_ps=step * TIMESTEP_FS / 1000.0, kind=None)
        row.update(description=str(failure), steps=step, seconds=time.perf_counter() - begin)
        return row
    change = report.topology_change
    if change is None:
        row.update(event="censored", censored=True, time_ps=report.steps * TIMESTEP_FS / 1000.0, kind=None)
        row.update(description=None)
    else:
        row.update(event="topology", censored=False, time_ps=report.topology_change_time_ps, kind=change.kind)
        row.update(description=change.description)
    row.update(
        steps=report.steps,
        seconds=report.seconds,
        steps_per_second=report.steps_per_second,
        mean_temperature_K=report.mean_temperature,
    )
    return row


def run_replicas(
    model,
    start,
    temperatures: list[float],
    replicas: int,
    max_ps: float,
    check_every: int,
    strict: bool,
    seed: int = 0,
    max_minutes: float | None = None,
    label: str = "",
) -> list[dict]:
    """Every temperature's replicas in one TorchSim batch (``--engine torchsim``): one model call per step
    for all of them. ``model`` is a TorchSim ``ModelInterface``. Prints each event and, every simulated
    picosecond, how far the batch is.

    TorchSim's BAOAB Langevin with ASE's friction and time step; Maxwell-Boltzmann momenta from ``seed``
    (replica r of a temperature is row r of that draw, so replicas differ by their start momenta and noise). The
    noise is one draw for the batch, so once a replica leaves, the others' noise (and trajectories) differ from
    a run in which it stayed: a run repeats only with the same events.
    Every ``check_every`` steps each running replica goes through :func:`mlip_cli.md.out_of_range` (the
    limits of ``mlip md``) and its :class:`~mlip_cli.topology.TopologyMonitor`; a replica that stops leaves
    the batch. ``max_minutes`` of wall time censors the replicas still running (for slow models).
    """
    import numpy as np
    import torch
    import torch_sim as ts
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from torch_sim.integrators import nvt_langevin

    from mlip_cli.md import MAX_DISPLACEMENT_A, MAX_FORCE_EV_A, MIN_MAX_TEMPERATURE_K, out_of_range, temperature
    from mlip_cli.topology import TopologyMonitor

    device, dtype = model.device, model.dtype
    runs = [{"temperature_K": t, "replica": r} for t in temperatures for r in range(replicas)]
    kt_all = torch.tensor([r["temperature_K"] * units.kB for r in runs], device=device, dtype=dtype)
    dt = TIMESTEP_FS * units.fs
    init, update = nvt_langevin(
        model,
        dt=torch.tensor(dt, device=device, dtype=dtype),
        kT=kt_all,
        gamma=torch.tensor(FRICTION_PER_FS / units.fs, device=device, dtype=dtype),
    )
    torch.manual_seed(seed)  # the O-step noise draws from torch's global generator
    state = init(ts.io.atoms_to_state([start] * len(runs), device, dtype), kT=kt_all, seed=seed)
    monitor = TopologyMonitor(start, partner_exchange=not strict)
    limits = [max(10 * r["temperature_K"], MIN_MAX_TEMPERATURE_K) for r in runs]
    active = list(range(len(runs)))  # run index of each system in the batch
    temps: list[list[float]] = [[] for _ in runs]
    n, max_steps = len(start), max(1, round(max_ps * 1000.0 / TIMESTEP_FS))
    begin, step = time.perf_counter(), 0
    deadline = None if max_minutes is None else begin + 60.0 * max_minutes

    def finish(i: int, event: str, kind, description) -> None:
        runs[i].update(event=event, censored=event == "censored", time_ps=step * TIMESTEP_FS / 1000.0, kind=kind)
        runs[i].update(description=description, steps=step, seconds=time.perf_counter() - begin)
        runs[i]["mean_temperature_K"] = float(np.mean(temps[i])) if temps[i] else None
        runs[i]["steps_per_second"] = step / runs[i]["seconds"]  # of the whole batch: each replica moves each step
        if event != "censored":
            print(
                f"{label}{runs[i]['temperature_K']:g} K replica {runs[i]['replica']}: {event} at "
                f"{runs[i]['time_ps']:.4g} ps ({description})",
                flush=True,
            )

    while active and step < max_steps and (deadline is None or time.perf_counter() < deadline):
        for _ in range(min(check_every, max_steps - step)):
            state = update(state, kT=kt_all[active])
            step += 1
        positions = state.positions.detach().cpu().numpy().reshape(len(active), n, 3)
        momenta = state.momenta.detach().cpu().numpy().reshape(len(active), n, 3)
        forces = state.forces.detach().cpu().numpy().reshape(len(active), n, 3)
        energies = state.energy.detach().cpu().numpy()
        keep = []
        for b, i in enumerate(active):
            atoms = start.copy()
            atoms.positions = positions[b]
            atoms.set_momenta(momenta[b], apply_constraint=False)
            atoms.calc = SinglePointCalculator(atoms, energy=float(energies[b]), forces=forces[b])
            problem = out_of_range(atoms, dt, MAX_FORCE_EV_A, limits[i], MAX_DISPLACEMENT_A)
            change = None if problem is not None else monitor.check(atoms)
            if problem is not None:
                finish(i, "failure", None, problem)
            elif change is not None:
                finish(i, "topology", change.kind, change.description)
            else:
                temps[i].append(temperature(atoms))
                keep.append(b)
        if len(keep) < len(active):
            active = [active[b] for b in keep]
            if active:
                state = state[keep]
        if step % PROGRESS_STEPS < check_every:
            rate = step / (time.perf_counter() - begin)
            print(f"{label}{step * TIMESTEP_FS / 1000.0:.4g} ps, {len(active)} running, {rate:.3g} steps/s", flush=True)
    for i in active:
        finish(i, "censored", None, None)
    return runs


def summarize(rows: list[dict], max_ps: float) -> list[dict]:
    """Per arm and temperature: events, censored runs, the times, and the median time to the first change
    (``None`` when half or more of the runs are censored: the median is then only known to exceed ``run_ps``,
    the length the censored runs reached)."""
    out = []
    for key in sorted({(r["arm"], r["temperature_K"]) for r in rows}):
        runs = [r for r in rows if (r["arm"], r["temperature_K"]) == key]
        times = sorted(r["time_ps"] for r in runs)
        events = [r for r in runs if not r["censored"]]
        median = statistics.median(times) if len(events) > len(runs) / 2 else None
        # the length the censored runs reached: max_ps, or less where --max-minutes ended them first
        reached = max((r["time_ps"] for r in runs if r["censored"]), default=max_ps)
        out.append(
            {
                "arm": key[0],
                "temperature_K": key[1],
                "runs": len(runs),
                "events": len(events),
                "censored": len(runs) - len(events),
                "first_event_ps": min((r["time_ps"] for r in events), default=None),
                "median_ps": median,
                "median_exceeds_max_ps": median is None,
                "times_ps": [r["time_ps"] for r in runs],
                "max_ps": max_ps,
                "run_ps": reached,
            }
        )
    return out


def named(values: list[str], option: str) -> list[tuple[str, Path]]:
    pairs = []
    for value in values:
        if "=" not in value:
            raise SystemExit(f"{option} takes NAME=PATH, got {value!r}")
        name, path = value.split("=", 1)
        pairs.append((name, Path(path)))
    return pairs


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--mace-client":
        model, start, socket_name, threads = sys.argv[2:6]
        mace_client(model, start, socket_name, int(threads))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--mace-replicas":
        mace_replicas(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", choices=sorted(SYSTEMS), default="acac")
    ap.add_argument("--model", action="append", default=[], help="NAME=CHECKPOINT (repeatable)")
    ap.add_argument("--mace", action="append", default=[], help="NAME=MACE_MODEL (repeatable)")
    ap.add_argument("--mace-python", default="/work/venvs/mace/bin/python")
    ap.add_argument("--temperatures", help="comma-separated K (default: acac 300,600; 3bpa 300)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    ap.add_argument("--max-ps", type=float, default=50.0, help="censor a run here (0.05: smoke mode)")
    ap.add_argument("--check-every", type=int, default=10, help="topology check interval, steps")
    ap.add_argument("--strict-bonds", action="store_true", help="count partner exchanges (proton hops) too")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--engine",
        choices=("ase", "torchsim"),
        default="ase",
        help="ase: one ASE Langevin run per seed; torchsim: each arm's runs as replicas of one TorchSim batch",
    )
    ap.add_argument("--device", default="cpu", help="torchsim engine: where the models run")
    ap.add_argument("--seed", type=int, default=0, help="torchsim engine: the batch's seed")
    ap.add_argument("--max-minutes", type=float, help="torchsim engine: censor an arm's runs after this wall time")
    ap.add_argument("--start", type=Path, help="start structure (default: the system's file, first frame)")
    ap.add_argument("--json", type=Path, help="output (default benchmarks/results/bench_stability_<system>_...)")
    args = ap.parse_args()
    models, maces = named(args.model, "--model"), named(args.mace, "--mace")
    if not models and not maces:
        ap.error("give at least one --model or --mace")
    if args.engine == "ase" and (args.device != "cpu" or args.max_minutes is not None):
        ap.error("--device and --max-minutes need --engine torchsim")
    start_path = args.start or DATA / SYSTEMS[args.system][0]
    temperatures = (
        [float(t) for t in args.temperatures.split(",")] if args.temperatures else list(SYSTEMS[args.system][1])
    )
    out = args.json or HERE / "results" / f"bench_stability_{args.system}_threads{args.threads}.json"

    import torch
    from ase.io import read

    sys.path.insert(0, str(HERE))
    from report import load_average, provenance, write_report  # benchmarks/report.py (imports mlip)

    from mlip_cli.calculator import MLIPCalculator

    torch.set_num_threads(args.threads)
    start = read(start_path, 0)
    load_before = load_average()
    rows, arms = [], []
    for name, path in models:
        if args.engine == "torchsim":
            from mlip_cli.torchsim import MLIPModel

            model = MLIPModel(path, device=args.device, dtype=torch.float64, compute_stress=False)
            network = model.model
            found = run_replicas(model, start, **replica_settings(temperatures, args), label=f"{name} ")
            rows += [{"arm": name, **row} for row in found]
        else:
            calc = MLIPCalculator.from_checkpoint(path, dtype="float64")
            network = calc.model
            rows += run_arm(name, calc, start, temperatures, args)
        arms.append({"arm": name, "kind": "mlip", "path": str(path), "family": network.config.family})
        arms[-1]["parameters"] = sum(p.numel() for p in network.parameters())
    for name, path in maces:
        arms.append({"arm": name, "kind": "mace", "path": str(path), "family": "mace"})
        if args.engine == "torchsim":
            found = mace_replicas_arm(name, path, start_path, replica_settings(temperatures, args), args)
            rows += [{"arm": name, **row} for row in found]
            continue
        mace = MaceArm(path, start_path, args.mace_python, args.threads, name)
        try:
            rows += run_arm(name, mace.calc, start, temperatures, args)
        finally:
            mace.close()
    meta = {
        "provenance": provenance(
            threads=args.threads, dtype="float64", sizes={"atoms": len(start)}, load_before=load_before
        ),
        "system": args.system,
        "start": f"{start_path} (frame 0)",
        "protocol": {
            "ensemble": (
                "nvt (ASE Langevin, fixcm off)"
                if args.engine == "ase"
                else "nvt (TorchSim BAOAB Langevin, the replicas of each arm in one batch)"
            ),
            "engine": args.engine,
            "device": args.device,
            "seed": args.seed if args.engine == "torchsim" else None,
            "max_minutes_per_arm": args.max_minutes,
            "timestep_fs": TIMESTEP_FS,
            "friction_per_fs": FRICTION_PER_FS,
            "temperatures_K": temperatures,
            "seeds": args.seeds,
            "max_ps": args.max_ps,
            "check_every_steps": args.check_every,
            "criteria": "an atom farther than max(2 A, 1.5x its starting nearest neighbour) from every other, or "
            "a covalent bond beyond 1.5x its starting length (mlip_cli/topology.py)"
            + (
                ""
                if args.strict_bonds
                else ", unless one of its atoms is now bonded to a new partner of the same "
                "element as the one it lost (a proton hop)"
            ),
            "strict_bonds": args.strict_bonds,
        },
        "arms": arms,
    }
    summary = summarize(rows, args.max_ps)
    lines = ["| arm | T (K) | runs | events | censored | first (ps) | median (ps) |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        median = f"> {s['run_ps']:.3g}" if s["median_ps"] is None else f"{s['median_ps']:.3g}"
        first = "-" if s["first_event_ps"] is None else f"{s['first_event_ps']:.3g}"
        lines.append(
            f"| {s['arm']} | {s['temperature_K']:g} | {s['runs']} | {s['events']} | {s['censored']} | {first} | "
            f"{median} |"
        )
    write_report(out, {"meta": meta, "summary": summary, "rows": rows}, "\n".join(lines))


def run_arm(name: str, calc, start, temperatures: list[float], args) -> list[dict]:
    rows = []
    for temperature in temperatures:
        for seed in range(args.seeds):
            row = {
                "arm": name,
                **run_one(calc, start, temperature, seed, args.max_ps, args.check_every, args.strict_bonds),
            }
            rows.append(row)
            what = row["description"] or "intact"
            print(f"{name} {temperature:g} K seed {seed}: {row['event']} at {row['time_ps']:.4g} ps ({what})")
    return rows


if __name__ == "__main__":
    main()
