"""``mlip select``: the most uncertain structures of a pool, one of each group of near-duplicates, seeded ties.

The oracle is independent of the ensemble's own combination and of the batching: each member run alone through
the ASE calculator, the spread computed here with numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from cli_runner import mlip
from tiny_models import tiny_config

from mlip_cli.calculator import MLIPCalculator
from mlip_cli.checkpoint import load_model, save_checkpoint
from mlip_cli.models import build_model

DISTINCT = ["H2O", "CH4", "NH3", "C2H6", "CO2", "HCOOH", "CH3CHO", "C2H4", "CH3OH", "CH3CN"]
COPIES = 6
XENON = 1  # pool index of the structure with Xe, which the tiny model does not know
EXTXYZ_DIGITS = 1e-7  # extxyz columns are written with 8 decimals


def _save(model, path):
    state = {"model_config": model.config.to_dict(), "dtype": "float64", "model_state": model.state_dict()}
    return save_checkpoint(path, {**state, "ema_state": None})


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """An untrained float64 tdn ensemble of 3 members (their random initialisations differ: a spread)."""
    torch.manual_seed(0)
    model = build_model({**tiny_config("tdn", lmax=1), "ensemble": 3}, dtype=torch.float64)
    model.set_statistics(e0s={1: -1.0, 6: -4.0, 7: -3.0, 8: -2.0})
    return _save(model, tmp_path_factory.mktemp("model") / "ensemble.pt")


def _distinct() -> list[Atoms]:
    frames = []
    for k, name in enumerate(DISTINCT):
        atoms = molecule(name)
        atoms.rattle(0.15, seed=k)
        frames.append(atoms)
    return frames


def _oracle(checkpoint, frames: list[Atoms]) -> list[dict]:
    """Per frame, from each member run alone: per-atom force uncertainty sqrt(mean_k |F_k - F_mean|^2), its mean
    and max, and the energy std per atom (population std over members)."""
    model = load_model(checkpoint)
    calcs = [MLIPCalculator(model.member(k)) for k in range(model.num_members)]
    out = []
    for atoms in frames:
        forces, energies = [], []
        for calc in calcs:
            copy = atoms.copy()
            copy.calc = calc
            forces.append(copy.get_forces(apply_constraint=False))
            energies.append(copy.get_potential_energy())
        forces = np.array(forces)
        per_atom = np.sqrt(np.square(forces - forces.mean(0)).sum(-1).mean(0))
        energy_std = float(np.std(energies))
        out.append(
            {
                "per_atom": per_atom,
                "mean": float(per_atom.mean()),
                "max": float(per_atom.max()),
                "energy": energy_std / len(atoms),
                "energy_std": energy_std,
            }
        )
    return out


@pytest.fixture(scope="module")
def distinct_scores(ensemble, tmp_path_factory):
    """The oracle for the distinct molecules as a pool file would hold them (extxyz rounds positions)."""
    path = tmp_path_factory.mktemp("distinct") / "distinct.extxyz"
    write(path, _distinct())
    return _oracle(ensemble, read(path, ":"))


def _pool(base: Atoms, others: list[Atoms], noise: float, path) -> list[Atoms]:
    """``base`` COPIES times (positions moved by ``noise`` A), the ``others``, and a Xe structure at XENON; the
    copies are spread through the file. Some frames carry labels and info, which the output must keep."""
    rng = np.random.default_rng(1)
    copies = []
    for _ in range(COPIES):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=noise, size=atoms.positions.shape)
        copies.append(atoms)
    frames = [copies[0], Atoms("XeH", positions=[[0, 0, 0], [0, 0, 1.7]])]
    for k, atoms in enumerate(others):
        frames.append(atoms)
        if k < len(copies) - 1:
            frames.append(copies[k + 1])
    frames += copies[len(others) + 1 :]
    for k, atoms in enumerate(frames):
        atoms.info["config_type"] = f"frame{k}"
        if k % 3 == 0:
            atoms.calc = SinglePointCalculator(atoms, energy=-1.5 * k, forces=np.full((len(atoms), 3), 0.01 * k))
    write(path, frames)
    return read(path, ":")


def _is_copy(atoms: Atoms, base: Atoms) -> bool:
    return len(atoms) == len(base) and np.abs(atoms.positions - base.positions).max() < 1e-2


@pytest.mark.parametrize("by", ["mean", "max", "energy"])
def test_picks_the_most_uncertain_and_one_of_the_near_duplicates(ensemble, distinct_scores, tmp_path, by):
    # duplicate the molecule the ensemble is least sure about, so that a pure ranking picks several copies
    most = int(np.argmax([s[by] for s in distinct_scores]))
    distinct = _distinct()
    base, others = distinct[most], distinct[:most] + distinct[most + 1 :]
    pool = _pool(base, others, noise=1e-4, path=tmp_path / "pool.extxyz")
    scores = _oracle(ensemble, pool[:XENON] + pool[XENON + 1 :])
    scores.insert(XENON, None)
    runnable = [i for i in range(len(pool)) if i != XENON]
    ranking = sorted(runnable, key=lambda i: -scores[i][by])
    copies = [i for i in runnable if _is_copy(pool[i], base)]
    assert len(copies) == COPIES
    n = 4
    assert len(set(ranking[:n]) & set(copies)) >= 2, "the pool does not test the diversity rule"

    out = tmp_path / "picked.extxyz"
    result = mlip("select", tmp_path / "pool.extxyz", "--model", ensemble, "--n", n, "--out", out, "--by", by)
    assert result.exit_code == 0, result.output
    skip_lines = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skip_lines) == 1 and f"#{XENON} (Xe)" in skip_lines[0], result.stderr

    # the most uncertain copy, then the most uncertain of the other molecules, in order of uncertainty
    best_copy = max(copies, key=lambda i: scores[i][by])
    expected = sorted([best_copy] + [i for i in ranking if i not in copies][: n - 1], key=lambda i: -scores[i][by])
    picked = read(out, ":")
    assert [a.info["pool_index"] for a in picked] == expected
    assert [a.info["select_rank"] for a in picked] == list(range(1, n + 1))
    for atoms in picked:
        i = atoms.info["pool_index"]
        source = pool[i]
        assert atoms.info["pool_file"] == str(tmp_path / "pool.extxyz")
        assert atoms.info["uncertainty_by"] == by
        assert atoms.info["uncertainty"] == pytest.approx(scores[i][by], rel=1e-9)
        assert atoms.info["energy_std"] == pytest.approx(scores[i]["energy_std"], rel=1e-9)
        np.testing.assert_allclose(atoms.arrays["forces_uncertainty"], scores[i]["per_atom"], atol=EXTXYZ_DIGITS)
        assert (atoms.numbers == source.numbers).all()
        np.testing.assert_allclose(atoms.positions, source.positions, atol=1e-12)
        assert (atoms.pbc == source.pbc).all() and np.allclose(atoms.cell, source.cell)
        assert atoms.info["config_type"] == source.info["config_type"]
        if source.calc is not None:  # the pool's labels, not predictions
            assert atoms.get_potential_energy() == source.get_potential_energy()
            np.testing.assert_allclose(atoms.get_forces(), source.get_forces(), atol=1e-12)
        else:
            assert atoms.calc is None


def test_without_the_diversity_rule_it_is_the_uncertainty_ranking(ensemble, distinct_scores, tmp_path):
    most = int(np.argmax([s["mean"] for s in distinct_scores]))
    distinct = _distinct()
    pool = _pool(distinct[most], distinct[:most] + distinct[most + 1 :], noise=1e-4, path=tmp_path / "pool.xyz")
    scores = _oracle(ensemble, pool[:XENON] + pool[XENON + 1 :])
    ranking = sorted(range(len(scores)), key=lambda i: -scores[i]["mean"])
    ranking = [i + (i >= XENON) for i in ranking]  # back to pool indices
    out = tmp_path / "picked.extxyz"
    result = mlip("select", tmp_path / "pool.xyz", "-m", ensemble, "-n", 5, "-o", out, "--min-distance", 0)
    assert result.exit_code == 0, result.output
    assert [a.info["pool_index"] for a in read(out, ":")] == ranking[:5]


def test_asking_for_more_than_the_pool_picks_each_group_once_with_a_note(ensemble, tmp_path):
    distinct = _distinct()
    pool = _pool(distinct[0], distinct[1:], noise=1e-4, path=tmp_path / "pool.extxyz")
    out = tmp_path / "picked.extxyz"
    result = mlip("select", tmp_path / "pool.extxyz", "-m", ensemble, "-n", 100, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    picked = read(out, ":")
    assert len(picked) == len(DISTINCT)  # one copy of the base and each other molecule
    assert sum(_is_copy(a, distinct[0]) for a in picked) == 1
    assert sorted({len(a) for a in picked}) == sorted({len(a) for a in pool if 54 not in a.numbers})
    assert "note: picked 10 of the 100 asked" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["picked"] == len(DISTINCT) and summary["scored"] == len(pool) - 1 and summary["skipped"] == 1


def test_same_seed_same_picks_another_seed_changes_only_ties(ensemble, tmp_path):
    """Exact copies run one per model call get bit-equal uncertainties: ties, which the seed orders."""
    distinct = _distinct()
    pool_path = tmp_path / "pool.extxyz"
    pool = _pool(distinct[0], distinct[1:], noise=0.0, path=pool_path)
    copies = {i for i, a in enumerate(pool) if _is_copy(a, distinct[0])}

    def picks(seed: int, name: str) -> tuple[list[int], list[float], bytes]:
        out = tmp_path / name
        args = ["--batch-atoms", 1, "--seed", seed, "--min-distance", 0]
        result = mlip("select", pool_path, "-m", ensemble, "-n", len(pool), "-o", out, *args)
        assert result.exit_code == 0, result.output
        frames = read(out, ":")
        return [a.info["pool_index"] for a in frames], [a.info["uncertainty"] for a in frames], out.read_bytes()

    first = picks(0, "a.extxyz")
    assert picks(0, "b.extxyz") == first[:2] + (first[2].replace(b"b.extxyz", b"a.extxyz"),)
    assert len({u for i, u in zip(first[0], first[1]) if i in copies}) == 1  # the copies tie exactly
    orders = set()
    for seed in range(1, 6):
        indices, uncertainties, _ = picks(seed, f"seed{seed}.extxyz")
        assert uncertainties == first[1]
        # a structure whose uncertainty no other shares keeps its rank; the copies may trade places
        for rank, i in enumerate(indices):
            if i not in copies:
                assert first[0][rank] == i
        orders.add(tuple(i for i in indices if i in copies))
    assert len(orders) > 1, "the seed does not order ties"


def test_a_plain_model_and_an_existing_output_are_refused_in_one_line(ensemble, tmp_path):
    torch.manual_seed(0)
    plain = _save(build_model(tiny_config("tdn", lmax=1), dtype=torch.float64), tmp_path / "plain.pt")
    write(tmp_path / "pool.extxyz", _distinct())
    out = tmp_path / "picked.extxyz"
    result = mlip("select", tmp_path / "pool.extxyz", "-m", plain, "-n", 2, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "not an ensemble" in result.stderr, result.stderr
    assert "Traceback" not in result.output and not out.exists()
    assert not list(tmp_path.glob(".*tmp-*"))

    out.write_text("keep me")
    result = mlip("select", tmp_path / "pool.extxyz", "-m", ensemble, "-n", 2, "-o", out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr and out.read_text() == "keep me"
    result = mlip("select", tmp_path / "pool.extxyz", "-m", ensemble, "-n", 2, "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(read(out, ":")) == 2

    result = mlip("select", tmp_path / "pool.extxyz", "-m", ensemble, "-n", 2, "-o", tmp_path / "picked.h5")
    assert result.exit_code == 2 and "extxyz" in result.stderr


def test_the_fingerprint_ignores_rotation_translation_atom_order_and_supercells():
    from ase.build import bulk

    from mlip_cli.select import fingerprint, fingerprint_matrix
    from mlip_datasets.record import Structure

    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.numbers[1] = 79
    cell.rattle(0.1, seed=3)
    moved = cell.copy()
    moved.rotate(37, (1, 2, 3), rotate_cell=True)
    moved.translate((0.3, -1.1, 2.0))
    moved = moved[[2, 0, 3, 1]]
    other = cell.copy()
    other.rattle(0.1, seed=4)
    frames = [cell, moved, cell * (2, 1, 1), other, molecule("CH3OH")]
    matrix = fingerprint_matrix([fingerprint(Structure.from_atoms(a), cutoff=3.5) for a in frames])
    distance = np.linalg.norm(matrix - matrix[0], axis=1)
    np.testing.assert_allclose(distance[:3], 0, atol=1e-10)
    assert distance[3] > 1e-3 and distance[4] > distance[3]
