"""Generator, E0 fitting, splits and validation: behaviour users rely on."""

import numpy as np
import pytest

from mlip_datasets.generate import generate
from mlip_datasets.record import Structure
from mlip_datasets.split import parse_fractions, split_indices
from mlip_datasets.stats import compute_stats, fit_e0s
from mlip_datasets.validate import check_structure


def test_slab_adsorbate_frames_look_like_oc20():
    frames = list(generate("slab-adsorbate", 12, seed=3))
    assert len(frames) == 12
    for s in frames:
        assert set(np.unique(s.tags)) == {0, 1, 2}
        assert s.fixed[s.tags == 0].all() and not s.fixed[s.tags == 2].any()
        assert s.forces.shape == (s.natoms, 3) and np.isfinite(s.energy)
        assert s.pbc.tolist() == [True, True, False]
    # frames of one system share sid and count fid up from 0
    first_sid = [s for s in frames if s.sid == frames[0].sid]
    assert [s.fid for s in first_sid] == list(range(len(first_sid)))
    # fixed atoms do not move along a relaxation trajectory
    np.testing.assert_array_equal(
        first_sid[0].positions[first_sid[0].fixed], first_sid[-1].positions[first_sid[-1].fixed]
    )


def test_generator_is_deterministic_and_molecules_carry_charge_spin():
    a = [s.energy for s in generate("slab-adsorbate", 6, seed=1)]
    b = [s.energy for s in generate("slab-adsorbate", 6, seed=1)]
    assert a == b
    mols = list(generate("molecule", 10, seed=0))
    for m in mols:
        assert m.charge == 0 and m.spin == 1 + int(m.numbers.sum()) % 2
        assert not m.pbc.any()


def test_fit_e0s_recovers_per_element_energies():
    rng = np.random.default_rng(0)
    true = {1: -13.6, 6: -1030.0, 8: -2040.0}
    comps = rng.integers(0, 6, size=(40, 3))
    energies = comps @ np.array(list(true.values())) + rng.normal(0, 1e-3, 40)
    e0s = fit_e0s(comps, energies, list(true))
    for z, e in true.items():
        assert e0s[z] == pytest.approx(e, abs=0.01)


def test_compute_stats_counts_neighbours_and_forces():
    s = Structure(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.74]], energy=-1.0, forces=[[0, 0, 1.0], [0, 0, -1.0]])
    stats = compute_stats([s], cutoff=1.0)
    assert stats.avg_neighbors == 1.0  # each H sees the other
    assert stats.force_rms == pytest.approx(np.sqrt(2 / 6))
    assert stats.periodicity == {"FFF": 1}
    assert stats.e0s[1] == pytest.approx(-0.5)


def test_split_is_reproducible_and_covers_everything():
    parts = split_indices(100, [0.8, 0.1, 0.1], seed=7)
    again = split_indices(100, [0.8, 0.1, 0.1], seed=7)
    assert [len(p) for p in parts] == [80, 10, 10]
    assert all((p == q).all() for p, q in zip(parts, again))
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    other = split_indices(100, [0.8, 0.1, 0.1], seed=8)
    assert not (parts[1] == other[1]).all()


def test_group_split_keeps_systems_together():
    groups = [i // 5 for i in range(200)]  # 40 systems with 5 frames each
    parts = split_indices(200, [0.8, 0.1, 0.1], seed=0, groups=groups)
    owner = {}
    for k, part in enumerate(parts):
        for i in part:
            assert owner.setdefault(groups[i], k) == k
    assert [len(p) for p in parts] == [160, 20, 20]


@pytest.mark.parametrize("text", ["0.5,0.6", "a,b", "1,-0.0", ""])
def test_bad_fractions_are_rejected(text):
    with pytest.raises(ValueError):
        parse_fractions(text)


def test_check_structure_finds_each_problem():
    good = Structure(numbers=[8, 1], positions=[[0, 0, 0], [0, 0, 0.97]], energy=1.0, forces=np.zeros((2, 3)))
    assert check_structure(good) == []
    assert "NaN" in check_structure(good.replace(energy=float("nan")))[0]
    assert "apart" in check_structure(good.replace(positions=[[0, 0, 0], [0, 0, 0.05]]))[0]
    beyond = good.replace()
    beyond.numbers = np.array([8, 200])  # Structure() refuses it; a reader that skips __post_init__ may not
    assert "unknown element" in check_structure(beyond)[0]
    assert "unknown element" in check_structure(good.replace(numbers=[8, 0]))[0]  # 0: ASE's dummy atom
    assert "shape" in check_structure(good.replace(forces=np.zeros((3, 3))))[0]
    periodic_no_cell = good.replace(pbc=[True, True, True])
    assert "cell vector is zero" in check_structure(periodic_no_cell)[0]


@pytest.mark.parametrize("kinds", [("slab-adsorbate", "molecule"), ("molecule",)])
def test_streamed_statistics_equal_the_direct_fit(kinds):
    """compute_stats keeps sums, not every composition: its E0s and energy statistics equal the least-squares fit
    and numpy statistics over all structures (mixed data, and data where compositions are nearly collinear)."""
    from mlip_datasets.generate import generate

    structures = [s for k, kind in enumerate(kinds) for s in generate(kind, 50, seed=k)]
    stats = compute_stats(structures)
    order = sorted(stats.element_counts)
    comp = np.array([[np.sum(s.numbers == z) for z in order] for s in structures])
    energies, natoms = np.array([s.energy for s in structures]), comp.sum(axis=1)
    expected = fit_e0s(comp, energies, order)
    residual = energies - comp @ np.array([expected[z] for z in order])
    # the fitted prediction, not each E0, is what is unique where compositions are collinear
    assert comp @ np.array([stats.e0s[z] for z in order]) == pytest.approx(energies - residual, rel=1e-10)
    assert stats.energy_per_atom_mean == pytest.approx(np.mean(energies / natoms), rel=1e-12)
    assert stats.energy_per_atom_std == pytest.approx(np.std(energies / natoms), rel=1e-9)
    assert stats.interaction_energy_per_atom_mean == pytest.approx(np.mean(residual / natoms), abs=1e-9)
    assert stats.interaction_energy_per_atom_std == pytest.approx(np.std(residual / natoms), rel=1e-6, abs=1e-9)
    assert stats.element_counts == {z: int(comp[:, k].sum()) for k, z in enumerate(order)}


def test_info_and_stats_of_a_native_store_use_its_stored_statistics(tmp_path, monkeypatch):
    """A native store keeps the statistics computed while it was written: `mlip data info|stats` show them without
    decoding a record (a million-structure store answers at once), and they equal a fresh pass."""
    import json

    from cli_runner import mlip

    from mlip_datasets.formats import native
    from mlip_datasets.generate import generate
    from mlip_datasets.io import open_dataset, write_dataset

    store = tmp_path / "store"
    write_dataset(store, generate("slab-adsorbate", 12, seed=3), shards=2)
    with open_dataset(store) as reader:
        fresh = compute_stats(reader).as_dict()

    def no_decoding(self, index):
        raise AssertionError("a record was decoded")

    monkeypatch.setattr(native.NativeReader, "__getitem__", no_decoding)
    shown = mlip("data", "stats", store, "--json")
    assert shown.exit_code == 0, shown.output
    stats = json.loads(shown.stdout)
    assert {k: v for k, v in stats.items() if k != "energy_kind"} == fresh
    info = json.loads(mlip("data", "info", store, "--json").stdout)
    assert info["structures"] == 12 and info["labels"] == fresh["label_counts"]
