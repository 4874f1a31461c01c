"""Bond-topology changes in MD: found at the step an independent computation with ASE's own neighbour list and
distances finds them, reported in one line, nothing reported for an intact run, and ``--stop-on-dissociation``
ends the run with a complete, readable trajectory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import units
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.neighborlist import NeighborList, natural_cutoffs
from ase.optimize import BFGS
from cli_runner import mlip

from mlip_cli.md import run_md
from mlip_cli.topology import TopologyMonitor

# the oracle's own statement of the criteria (mlip_cli/topology.py's docstring)
MULTIPLIER, ISOLATION_A, STRETCH = 1.2, 2.0, 1.5
COVALENT = {"H", "He", "B", "C", "N", "O", "F", "Ne", "Si", "P", "S", "Cl", "Ar", "Ge", "As", "Se", "Br", "Kr"}
COVALENT |= {"Sb", "Te", "I", "Xe", "At", "Rn"}


def oracle_changes(start, now, partner_exchange=True) -> tuple[set[int], set[tuple[int, int]]]:
    """(dissociated atoms, broken covalent bonds) of ``now`` against ``start``, with ASE's NeighborList for the
    starting neighbours and minimum-image distances (the test cells are large enough for minimum image)."""
    nl = NeighborList(natural_cutoffs(start, mult=MULTIPLIER), self_interaction=False, bothways=True, skin=0.0)
    nl.update(start)
    symbols = start.get_chemical_symbols()
    neighbours = [set(nl.get_neighbors(i)[0].tolist()) for i in range(len(start))]

    cutoffs = natural_cutoffs(start, mult=MULTIPLIER)

    def new_partner(a, lost):  # now bonded to an atom of lost's element that was not its neighbour at the start
        new = [k for k in range(len(now)) if symbols[k] == symbols[lost] and k not in (a, lost, *neighbours[a])]
        # a proton between N/O/F atoms may be as far from its new partner as the stretch limit of the bond it left
        shared = (
            STRETCH * start.get_distance(a, lost, mic=True)
            if symbols[a] == "H" and symbols[lost] in {"N", "O", "F"}
            else 0
        )
        return any(now.get_distance(a, k, mic=True) < max(cutoffs[a] + cutoffs[k], shared) for k in new)

    gone, broken = set(), set()
    for i in range(len(start)):
        if not neighbours[i]:
            continue
        others = [j for j in range(len(start)) if j != i]
        nn0 = start.get_distances(i, sorted(neighbours[i]), mic=True).min()
        if now.get_distances(i, others, mic=True).min() > max(ISOLATION_A, STRETCH * nn0):
            gone.add(i)
        for j in neighbours[i]:
            covalent = symbols[i] in COVALENT and symbols[j] in COVALENT
            d0 = start.get_distance(i, j, mic=True)
            if i < j and covalent and now.get_distance(i, j, mic=True) > STRETCH * d0:
                exchanged = new_partner(i, j) or new_partner(j, i)
                if not (partner_exchange and exchanged):
                    broken.add((i, j))
    return gone, broken


def assert_same_verdict(change, start, now, partner_exchange=True):
    gone, broken = oracle_changes(start, now, partner_exchange)
    if gone:
        assert change.kind == "dissociation" and change.count == len(gone) and change.atoms[0] in gone
    elif broken:
        assert change.kind == "bond" and change.count == len(broken) and tuple(sorted(change.atoms)) in broken
    else:
        assert change is None


def first_oracle_change(frames) -> int | None:
    for k, frame in enumerate(frames):
        if any(oracle_changes(frames[0], frame)):
            return k
    return None


def displaced(atoms, moves: dict[int, tuple]):
    """``atoms`` with atom ``i`` moved by a vector ``(x, y, z)`` or ``(j, d)``: by ``d`` A away from atom ``j``
    (minimum image)."""
    out = atoms.copy()
    for i, move in moves.items():
        if len(move) == 2:
            j, d = move
            vector = atoms.get_distance(j, i, mic=True, vector=True)
            move = d * vector / np.linalg.norm(vector)
        out.positions[i] += move
    return out


def adatom_slab():
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=8.0)
    slab.pbc = (True, True, False)
    top = slab.positions[:, 2].max()
    slab.append("O")
    slab.positions[-1] = slab.positions[-1] * 0 + [0.0, 0.0, top + 1.2]
    return slab


def water_across_the_boundary():
    """A water molecule whose O-H bonds cross the faces of a small periodic box."""
    water = molecule("H2O")
    water.cell = [6.0, 6.0, 6.0]
    water.pbc = True
    water.positions -= water.positions[0]  # O at the corner: the H atoms wrap to the far side
    water.wrap()
    return water


CASES = {
    "methanol intact": (lambda: molecule("CH3OH"), {1: (0.05, 0.0, 0.0)}),
    "methanol O-H stretched": (lambda: molecule("CH3OH"), {3: (1, 0.6)}),
    "methanol two C-H stretched": (lambda: molecule("CH3OH"), {2: (0, 0.7), 4: (0, 0.8)}),
    "methanol H gone": (lambda: molecule("CH3OH"), {5: (0.0, 3.0, 0.0)}),
    "Cu bulk rattled": (lambda: bulk("Cu", "fcc", a=3.6) * (3, 3, 3), {0: (0.6, 0.6, 0.0)}),
    "Cu bulk atom squeezed": (lambda: bulk("Cu", "fcc", a=3.6) * (3, 3, 3), {0: (1.2, 0.0, 0.0)}),
    "O adatom leaves the slab": (adatom_slab, {8: (0.0, 0.0, 4.0)}),
    "O adatom stays": (adatom_slab, {8: (0.3, 0.0, 0.5)}),
    "Si bulk bond stretched": (lambda: bulk("Si", cubic=True) * (2, 2, 2), {0: (1, 1.3)}),
    "periodic water intact": (water_across_the_boundary, {1: (0.05, 0.0, 0.0)}),
    "periodic water O-H across the face stretched": (water_across_the_boundary, {1: (0, 0.8)}),
}


@pytest.mark.parametrize("case", CASES)
def test_monitor_agrees_with_ase_neighbour_list_oracle(case):
    build, moves = CASES[case]
    start = build()
    now = displaced(start, moves)
    change = TopologyMonitor(start).check(now)
    assert_same_verdict(change, start, now)
    assert (change is None) == case.endswith(("intact", "rattled", "stays", "squeezed"))


def water_dimer_proton_moved(to_acceptor: float, off_line: float):
    """The S22 water dimer with the bridging proton moved to ``to_acceptor`` A from the acceptor O along the
    O...O line, then ``off_line`` A off it: (start, now, donor O, proton, acceptor O)."""
    from ase.collections import s22

    start = s22["Water_dimer"]
    oxygens = [i for i, z in enumerate(start.numbers) if z == 8]
    hydrogens = [i for i, z in enumerate(start.numbers) if z == 1]
    # the bridging proton: the H closest to an O it is not bonded to
    proton, acceptor = min(
        ((h, o) for h in hydrogens for o in oxygens if start.get_distance(h, o) > 1.3),
        key=lambda pair: start.get_distance(*pair),
    )
    donor = next(o for o in oxygens if o != acceptor)
    now = start.copy()
    axis = start.positions[donor] - start.positions[acceptor]
    axis /= np.linalg.norm(axis)
    normal = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal)
    now.positions[proton] = start.positions[acceptor] + to_acceptor * axis + off_line * normal
    return start, now, donor, proton, acceptor


@pytest.mark.parametrize("partner_exchange", [True, False])
@pytest.mark.parametrize(
    "to_acceptor, off_line, taken",
    # taken, shared in flight (1.21 A: past the O-H neighbour distance 1.16, inside 1.5x the O-H bond), stranded
    [(0.97, 0.0, True), (1.05, 0.3, True), (1.21, 0.0, True), (1.4, 1.0, False)],
)
def test_proton_transfer_is_a_partner_exchange(partner_exchange, to_acceptor, off_line, taken):
    start, now, donor, proton, acceptor = water_dimer_proton_moved(to_acceptor, off_line)
    change = TopologyMonitor(start, partner_exchange=partner_exchange).check(now)
    assert_same_verdict(change, start, now, partner_exchange)
    assert now.get_distance(donor, proton) > STRETCH * start.get_distance(donor, proton)  # far from its donor
    if partner_exchange and taken:  # the acceptor O took the proton: nothing broke
        assert change is None
    else:  # strict, or the proton between the two, bonded to neither: the donor's O-H bond broke
        assert change.kind == "bond" and set(change.atoms) == {donor, proton}


def test_hydrogen_between_two_carbons_in_flight_is_a_break():
    """Ethane with one H moved 1.7 A from its carbon (1.56x its bond) and 1.4 A from the other carbon: beyond the
    C-H neighbour distance of both, and carbon takes no hydrogen bond, so the C-H bond broke."""
    start = molecule("C2H6")
    c1, c2 = (i for i, z in enumerate(start.numbers) if z == 6)
    h = min((i for i, z in enumerate(start.numbers) if z == 1), key=lambda i: start.get_distance(c1, i))
    axis = start.positions[c2] - start.positions[c1]
    length = np.linalg.norm(axis)
    axis /= length
    normal = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal)
    along = (1.7**2 - 1.4**2 + length**2) / (2 * length)  # 1.7 A from c1 and 1.4 A from c2
    now = start.copy()
    now.positions[h] = start.positions[c1] + along * axis + np.sqrt(1.7**2 - along**2) * normal
    assert np.isclose(now.get_distance(c1, h), 1.7) and np.isclose(now.get_distance(c2, h), 1.4)
    change = TopologyMonitor(start).check(now)
    assert_same_verdict(change, start, now)
    assert change.kind == "bond" and set(change.atoms) == {c1, h}


def test_metal_neighbours_are_not_bonds_and_isolation_is_relative():
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    monitor = TopologyMonitor(cu)
    assert monitor.num_bonds == 0 and monitor.watched.all()  # dissociation only
    assert np.allclose(monitor.isolation, STRETCH * 3.6 / np.sqrt(2))  # 1.5 x the nearest neighbour, not 2 A
    assert monitor.check(cu) is None


def kicked_methanol():
    """EMT methanol with its hydroxyl H (atom 3) sent away from O at 0.3 A/fs, everything else at rest."""
    atoms = molecule("CH3OH")
    atoms.calc = EMT()
    direction = atoms.positions[3] - atoms.positions[1]
    velocities = np.zeros((len(atoms), 3))
    velocities[3] = 0.3 * direction / np.linalg.norm(direction)
    atoms.set_velocities(velocities / units.fs)
    return atoms


@pytest.mark.parametrize("interval", [1, 5])
def test_run_md_finds_the_change_at_the_step_the_oracle_does(tmp_path, interval):
    atoms = kicked_methanol()
    traj = tmp_path / "kick.extxyz"
    lines = []
    report = run_md(
        atoms,
        "nve",
        steps=40,
        timestep_fs=0.5,
        init_velocities=False,
        trajectory=traj,
        traj_interval=1,
        topology_interval=interval,
        notify=lines.append,
    )
    frames = read(traj, ":")
    assert report.steps == 40 and len(frames) == 41 and report.stop_reason is None  # not asked to stop
    first = first_oracle_change(frames)
    assert first is not None and 0 < first < 40
    step = report.topology_change_step
    assert step == -(-first // interval) * interval  # the first check at or after the oracle's first change
    assert_same_verdict(report.topology_change, frames[0], frames[step])
    assert report.topology_change_time_ps == pytest.approx(step * 0.5e-3)
    assert lines == [f"step {step} ({step * 0.5e-3:.4g} ps): {report.topology_change.description}"]
    assert lines[0].split(": ", 1)[1].startswith("bond 1-3 (O-H) is ")


def test_intact_runs_report_no_change(tmp_path):
    mol = molecule("CH3OH")
    mol.calc = EMT()
    BFGS(mol, logfile=None).run(fmax=0.01, steps=300)  # EMT's own minimum, so 300 K only vibrates it
    cu = bulk("Cu", "fcc", a=3.6) * (3, 3, 3)
    cu.calc = EMT()
    for atoms in (mol, cu):
        start = atoms.copy()
        traj = tmp_path / f"{atoms.get_chemical_formula()}.extxyz"
        lines = []
        report = run_md(
            atoms,
            "nvt",
            steps=200,
            timestep_fs=0.5,
            temperature_K=300,
            seed=1,
            trajectory=traj,
            topology_interval=1,
            notify=lines.append,
        )
        assert report.topology_change is None and report.topology_change_step is None and lines == []
        frames = read(traj, ":")
        assert len(frames) == 21 and first_oracle_change([start, *frames]) is None


def test_stop_on_dissociation_through_the_cli(checkpoint, tmp_path):
    """The untrained tiny model pulls methanol together and flings it apart within a few dozen steps (the
    physical-range guards, which would stop it first, are lifted)."""
    src, traj, log = tmp_path / "mol.xyz", tmp_path / "md.traj", tmp_path / "md.log"
    write(src, molecule("CH3OH"))
    args = ["md", src, "-m", checkpoint, "--ensemble", "nvt", "--temperature", 300, "--steps", 400]
    args += [
        "--max-temperature",
        1e7,
        "--max-displacement",
        5,
        "--timestep",
        0.5,
        "--traj",
        traj,
        "--traj-interval",
        1,
        "--log",
        log,
        "--log-interval",
        1,
    ]
    result = mlip(*args, "--topology-interval", 1, "--stop-on-dissociation", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    step = report["topology_change_step"]
    assert 0 < step < 400 and report["steps"] == step
    assert report["stop_reason"] == f"step {step} ({step * 0.5e-3:.4g} ps): {report['topology_change']['description']}"
    (line,) = [ln for ln in result.stderr.splitlines() if "mlip md:" in ln]
    assert line == f"mlip md: stopped at {report['stop_reason']}"
    frames = read(traj, ":")  # complete: every step up to the one that stopped it
    assert len(frames) == step + 1 and first_oracle_change(frames) == step
    assert len(np.loadtxt(log, skiprows=1, ndmin=2)) == step + 1

    result = mlip(*args, "--overwrite", "--topology-interval", 0, "--json")  # not watched: runs to the end
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["steps"] == 400 and report["topology_change"] is None and report["stop_reason"] is None
