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
