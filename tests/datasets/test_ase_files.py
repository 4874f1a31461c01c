"""extxyz, ASE SQLite and generic ase.io files, with ase.io / ase.db as the oracle."""

import ase.io as ase_io
import numpy as np
import pytest
from datasets_testlib import assert_same_structure

from mlip_datasets import DataError, LabelKeys, Structure
from mlip_datasets.formats import get_format
from mlip_datasets.formats.ase_files import AseDbReader, AseFileReader

#: ASE's extxyz writer prints per-atom columns with 8 decimals; comment-line values keep full precision
EXTXYZ_DIGITS = {"positions": 1e-8, "forces": 1e-8}
EXTXYZ, ASEDB, ASE = get_format("extxyz"), get_format("asedb"), get_format("ase")


def _slab_frames(n=3):
    """OC20-like frames: EMT labels, stress, tags, a fixed bottom layer, charge/spin/sid/fid."""
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT

    out = []
    for k in range(n):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
        add_adsorbate(slab, "O", 1.6)
        slab.rattle(0.05, seed=k)
        slab.calc = EMT()
        natoms = len(slab)
        tags = np.where(np.arange(natoms) == natoms - 1, 2, slab.get_tags() == 1).astype(int)
        out.append(
            Structure(
                numbers=slab.numbers,
                positions=slab.positions,
                cell=slab.cell[:],
                pbc=slab.pbc,
                energy=slab.get_potential_energy(),
                forces=slab.get_forces(),
                stress=slab.get_stress(voigt=False),
                charge=float(k - 1),
                spin=1 + k % 2,
                tags=tags,
                fixed=np.arange(natoms) < 4,
                sid=f"slab{k}",
                fid=k,
                info={"config_type": "slab"},
            )
        )
    return out


def test_extxyz_round_trip_with_ase_as_oracle(tmp_path):
    frames = _slab_frames()
    path = tmp_path / "frames.extxyz"
    assert EXTXYZ.write(path, frames) == 3
    # the oracle: what ASE itself reads from our file
    for s, atoms in zip(frames, ase_io.read(path, index=":")):
        assert atoms.get_potential_energy() == s.energy  # comment-line values keep full precision
        np.testing.assert_allclose(atoms.get_forces(apply_constraint=False), s.forces, rtol=0, atol=1e-8)
        np.testing.assert_allclose(atoms.get_stress(voigt=False), s.stress, atol=1e-12)
        np.testing.assert_array_equal(atoms.get_tags(), s.tags)
        assert atoms.constraints[0].get_indices().tolist() == [0, 1, 2, 3]
        assert (atoms.info["charge"], atoms.info["spin"], atoms.info["sid"]) == (s.charge, s.spin, s.sid)
    reader = EXTXYZ.open(path, LabelKeys())
    assert len(reader) == 3 and reader.natoms(0) == 13
    for a, b in zip(frames, reader):
        assert_same_structure(a, b, tolerance=EXTXYZ_DIGITS)


def test_extxyz_label_keys_pick_ref_labels(tmp_path):
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = molecule("H2O")
    ref_forces = np.arange(9.0).reshape(3, 3)
    atoms.info["REF_energy"] = -14.5
    atoms.arrays["REF_forces"] = ref_forces
    atoms.calc = SinglePointCalculator(atoms, energy=1.0, forces=np.zeros((3, 3)))
    path = tmp_path / "ref.xyz"
    ase_io.write(path, atoms, format="extxyz")

    ref = EXTXYZ.open(path, LabelKeys(energy="REF_energy", forces="REF_forces"))[0]
    assert ref.energy == -14.5
    np.testing.assert_array_equal(ref.forces, ref_forces)
    assert "REF_energy" not in ref.info
    plain = EXTXYZ.open(path, LabelKeys())[0]
    assert plain.energy == 1.0 and not plain.forces.any()


def test_raw_oc20_extxyz_move_mask_and_tags(tmp_path):
    text = (
        "3\n"
        'Lattice="5 0 0 0 5 0 0 0 20" Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 '
        'energy=-1.5 pbc="T T F"\n'
        "Cu 0 0 0 F 0 0 0 0\n"
        "Cu 2.5 2.5 0 T 1 0 0 0.1\n"
        "O 2.5 2.5 1.8 T 2 0.1 0 0\n"
    )
    path = tmp_path / "oc20.extxyz"
    path.write_text(text)
    s = EXTXYZ.open(path, LabelKeys())[0]
    assert s.fixed.tolist() == [True, False, False]
    assert s.tags.tolist() == [0, 1, 2] and s.energy == -1.5
    assert s.forces[2, 0] == 0.1


def test_corrupt_extxyz_names_file_and_frame(tmp_path):
    frames = _slab_frames(2)
    path = tmp_path / "bad.extxyz"
    EXTXYZ.write(path, frames)
    lines = path.read_text().splitlines()
    second = 2 + len(frames[0].numbers)  # first line of frame 1
    lines[second + 3] = "Cu 0.0 nonsense"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        len(EXTXYZ.open(path, LabelKeys()))
    assert "bad.extxyz" in str(err.value) and "record frame 1" in str(err.value)


def test_asedb_round_trip_with_ase_db_as_oracle(tmp_path):
    import ase.db

    frames = _slab_frames(2) + [Structure(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.74]], charge=1, spin=2, sid=7)]
    path = tmp_path / "frames.db"
    assert ASEDB.write(path, frames) == 3
    db = ase.db.connect(str(path))
    assert db.count() == 3
    row = db.get(id=1)
    assert row.data["charge"] == -1 and row.data["spin"] == 1 and row.data["sid"] == "slab0"
    assert row.energy == pytest.approx(frames[0].energy, abs=1e-12)
    reader = ASEDB.open(path, LabelKeys())
    assert isinstance(reader, AseDbReader) and len(reader) == 3
    for a, b in zip(frames, reader):
        assert_same_structure(a, b)
    assert reader[0].info == {"config_type": "slab"} and reader.record_name(2) == "frames.db id 3"


def test_asedb_written_by_ase_with_key_value_pairs(tmp_path):
    import ase.db
    from ase.build import molecule

    path = tmp_path / "kvp.db"
    db = ase.db.connect(str(path))
    db.write(molecule("C6H6"))
    db.write(molecule("CH4"), data={"charge": 0, "REF_forces": np.ones((5, 3))})
    db.write(molecule("H2O"), key_value_pairs={"fid": 2})
    # AtomsRow.charge is a property (sum of initial charges) that hides a "charge" key-value pair
    db.write(molecule("NH3"), key_value_pairs={"charge": -1, "spin": 3, "sid": 5, "dft": "pbe"})
    db.delete([1])
    reader = ASEDB.open(path, LabelKeys(forces="REF_forces"))
    assert len(reader) == 3  # ids 2, 3 and 4
    methane, water, amine = reader
    assert methane.charge == 0 and methane.forces.shape == (5, 3) and methane.forces.all()
    assert water.fid == 2 and water.charge is None and water.forces is None
    assert (amine.charge, amine.spin, amine.sid) == (-1, 3, 5) and amine.info == {"dft": "pbe"}


def test_generic_ase_format_reads_a_trajectory_and_a_cif(tmp_path):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", cubic=True)
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    ase_io.write(tmp_path / "run.traj", [atoms, atoms])
    reader = ASE.open(tmp_path / "run.traj", LabelKeys())
    assert len(reader) == 2 and reader[1].energy == pytest.approx(energy)
    ase_io.write(tmp_path / "cu.cif", atoms)
    cif = ASE.open(tmp_path / "cu.cif", LabelKeys())
    assert len(cif) == 1 and cif[0].natoms == 4 and cif[0].energy is None
    (tmp_path / "junk.qqq").write_text("hello")
    with pytest.raises(DataError, match="junk.qqq: ase.io cannot read this file"):
        len(ASE.open(tmp_path / "junk.qqq", LabelKeys()))


def test_writers_refuse_shards_and_bad_shapes(tmp_path):
    frames = _slab_frames(1)
    for fmt, name in ((EXTXYZ, "x.extxyz"), (ASEDB, "x.db")):
        with pytest.raises(DataError, match="single file"):
            fmt.write(tmp_path / name, frames, shards=2)
    bad = frames[0].replace(tags=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match=r"record 0: tags has shape \(3,\)"):
        EXTXYZ.write(tmp_path / "y.extxyz", [bad])


def test_reader_pickles_without_its_frames(tmp_path):
    import pickle

    path = tmp_path / "p.extxyz"
    EXTXYZ.write(path, _slab_frames(2))
    reader = AseFileReader(path, LabelKeys(), ase_format="extxyz", format_name="extxyz")
    first = reader[0]
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._frames is None and clone[0].energy == first.energy
