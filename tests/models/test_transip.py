"""TransIP: physics (forces, stress, cutoff), learned equivariance (alignment loss, training hooks, augmentation)
and frame averaging (exact invariance), in float64 on tiny models. The tuned symmetry weights are a training
controller: tests/train/test_symmetry_weights.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from models_testlib import (
    CUTOFF,
    assert_forces_match_finite_difference,
    assert_grad_matches_finite_difference,
    minimise_regularizers,
    tiny_config,
)

from mlip_cli.models import ConfigError, build_model, random_rotate_batch
from mlip_cli.models.soft_equivariance import Irreps, alignment_loss, random_reflections, rotate_embeddings, safe_eigh
from mlip_cli.models.symmetry import transform_batch
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure
from mlip_kernels.wigner import random_rotation

TOL = 1e-10


def _config(**changes) -> dict:
    return tiny_config("transip", **{**dict(channels=8, vector_channels=2, num_heads=2, ff_hidden=16), **changes})


def _model(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_model(_config(**changes), dtype=torch.float64).eval()


def _batch(graphs, names=("bulk", "slab", "molecule")):
    return collate_graphs([graphs[k] for k in names])


def _permuted(batch, perm: torch.Tensor):
    """New atom k = old atom perm[k] (perm keeps every atom in its structure)."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    return dataclasses.replace(
        batch,
        positions=batch.positions[perm],
        numbers=batch.numbers[perm],
        edge_index=inv[batch.edge_index],
        forces=batch.forces[perm],
    )


# ----------------------------------------------------------------------------------------------- physics
@pytest.mark.parametrize("fa", [False, True])
def test_forces_are_minus_energy_gradient(fa, graphs):
    model = _model(frame_averaging=fa)
    batch = _batch(graphs, ("slab", "molecule", "bulk"))
    assert_forces_match_finite_difference(model, batch, samples=6)


@pytest.mark.parametrize("fa", [False, True])
def test_stress_is_strain_derivative(fa, graphs):
    model = _model(frame_averaging=fa)
    batch = _batch(graphs)
    stress = model(batch, compute_stress=True)["stress"]
    assert torch.all(stress[2] == 0)  # the molecule
    h = 1e-5
    for k in (0, 1):
        volume = torch.linalg.det(batch.cell[k]).abs()
        assert stress[k].abs().max() > 1e-6
        for i, j in ((0, 0), (1, 2), (2, 2), (0, 1)):
            S = torch.zeros(3, 3, dtype=torch.float64)
            S[i, j] += h / 2
            S[j, i] += h / 2
            e = []
            for sign in (1, -1):
                pos, cell = batch.positions.clone(), batch.cell.clone()
                sl = slice(int(batch.ptr[k]), int(batch.ptr[k + 1]))
                pos[sl] = pos[sl] + sign * pos[sl] @ S
                cell[k] = cell[k] + sign * cell[k] @ S
                e.append(model(dataclasses.replace(batch, positions=pos, cell=cell), compute_forces=False)["energy"][k])
            fd = (e[0] - e[1]) / (2 * h) / volume
            assert abs(fd - stress[k, i, j]) < 1e-8 + 1e-6 * stress[k].abs().max(), (fa, k, i, j)


@pytest.mark.parametrize("fa", [False, True])
def test_energy_continuous_across_cutoff(fa):
    """An edge entering the neighbour list changes energy and forces by ~0 (softmax weights carry the envelope)."""
    model = _model(frame_averaging=fa)

    def run(d: float):
        n = np.array([0.2, 1.0, 0.4]) / np.linalg.norm([0.2, 1.0, 0.4])
        positions = [[0.0, 0.0, 0.0], [-1.1, -0.3, 0.0], list(d * n)]  # atom 2 sees only atom 0 near the cutoff
        g = structure_to_graph(Structure(numbers=[8, 6, 1], positions=positions), CUTOFF, dtype=torch.float64)
        return g.num_edges, model(collate_graphs([g]))

    n_in, inside = run(CUTOFF - 1e-6)
    n_out, outside = run(CUTOFF + 1e-6)
    assert n_in == n_out + 2
    assert abs(inside["energy"] - outside["energy"]) < 1e-12
    assert (inside["forces"] - outside["forces"]).abs().max() < 1e-9
    _, closer = run(0.7 * CUTOFF)
    assert abs(closer["energy"] - outside["energy"]) > 1e-5


def test_batch_equals_single_structures_with_frames(graphs):
    """Frames are per structure: a batch gives each structure the energy and forces it has alone."""
    model = _model(frame_averaging=True)
    names = ("slab", "bulk", "molecule")
    together = model(_batch(graphs, names), compute_stress=True)
    start = 0
    for b, k in enumerate(names):
        alone = model(collate_graphs([graphs[k]]), compute_stress=True)
        n = graphs[k].natoms
        torch.testing.assert_close(together["energy"][b], alone["energy"][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(together["forces"][start : start + n], alone["forces"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(together["stress"][b], alone["stress"][0], rtol=1e-10, atol=1e-12)
        start += n


@pytest.mark.parametrize("fa", [False, True])
def test_force_loss_backpropagates_to_parameters(fa, graphs):
    """Training on forces needs the double backward (through the frames' eigh with averaging on): FD check."""
    model = _model(frame_averaging=fa).train()
    batch = _batch(graphs, ("slab", "molecule"))
    param = model.blocks[0].edge_kv.weight

    def loss():
        out = model(batch)
        return out["forces"].pow(2).sum() + out["energy"].pow(2).sum()

    (g,) = torch.autograd.grad(loss(), [param])
    assert abs(g[0, 0]) > 1e-6
    assert_grad_matches_finite_difference(loss, param, g)


# ---------------------------------------------------------------------------------------------- symmetry
def test_random_init_is_not_equivariant(graphs):
    """Without frame averaging nothing forces symmetry: the learned equivariance has something to learn."""
    model = _model()
    batch = _batch(graphs)
    e = model(batch, compute_forces=False)["energy"]
    R = random_rotation(batch.num_graphs, generator=torch.Generator().manual_seed(3))
    e_rot = model(transform_batch(batch, R), compute_forces=False)["energy"]
    assert (e_rot - e).abs().max() > 1e-4
    hooks = model.training_hooks()  # what the trainer asks for
    assert hooks.has_regularizers and hooks.symmetry_types == ("rotation", "inversion")
    torch.manual_seed(0)
    losses = hooks.regularizers(batch, None)
    assert list(losses) == ["rotation", "inversion"]
    assert all(v.item() > 1e-3 and v.requires_grad for v in losses.values())
    torch.manual_seed(0)  # draws come from the global RNG: the same seed replays them
    again = model.regularizers(batch)
    assert all(again[k].item() == losses[k].item() for k in losses)
    # the inversion draws nothing: only the rotation moves the global RNG (resumed runs replay exactly)
    torch.manual_seed(0)
    random_rotation(batch.num_graphs)
    after_one_rotation = torch.rand(1)
    torch.manual_seed(0)
    model.regularizers(batch)
    assert torch.equal(torch.rand(1), after_one_rotation)


def test_frame_averaged_energy_is_exactly_invariant(graphs):
    """Rotations, mirrors, translations and atom permutations leave the energy unchanged; forces and stress
    transform with the structure."""
    model = _model(frame_averaging=True)
    batch = _batch(graphs)
    ref = model(batch, compute_stress=True)
    gen = torch.Generator().manual_seed(5)
    B = batch.num_graphs
    perm = torch.cat([int(batch.ptr[b]) + torch.randperm(int(batch.natoms[b]), generator=gen) for b in range(B)])
    for g in (
        random_rotation(B, generator=gen),
        random_reflections(B, generator=gen),
        -random_rotation(B, generator=gen),
    ):
        moved = transform_batch(batch, g)
        shift = torch.randn(3, generator=gen, dtype=torch.float64)
        moved = dataclasses.replace(moved, positions=moved.positions + shift)
        out = model(_permuted(moved, perm), compute_stress=True)
        torch.testing.assert_close(out["energy"], ref["energy"], atol=TOL * (1 + ref["energy"].abs().max()), rtol=0)
        f_ref = torch.einsum("nij,nj->ni", g[batch.batch], ref["forces"])[perm]
        torch.testing.assert_close(out["forces"], f_ref, atol=TOL * (1 + ref["forces"].abs().max()), rtol=0)
        torch.testing.assert_close(out["stress"], g @ ref["stress"] @ g.transpose(1, 2), atol=TOL, rtol=0)


def test_frame_averaging_survives_degenerate_frames():
    """A perfect fcc crystal (isotropic covariance) and a lone atom: finite energies, forces, stress."""
    model = _model(frame_averaging=True)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    graphs = [
        structure_to_graph(
            Structure(numbers=cu.numbers, positions=cu.positions, cell=cu.cell.array, pbc=True),
            CUTOFF,
            dtype=torch.float64,
        ),
        structure_to_graph(Structure(numbers=[8], positions=[[0.0, 0.0, 0.0]]), CUTOFF, dtype=torch.float64),
    ]
    out = model(collate_graphs(graphs), compute_stress=True)
    assert all(torch.isfinite(out[k]).all() for k in ("energy", "forces", "stress"))
    assert out["forces"].abs().max() < 1e-8  # every atom of a perfect lattice is a centre of inversion


def test_rotate_embeddings_matches_e3nn_wigner_d():
    """Declared irreps rotate like e3nn's D_from_matrix, parity included; l = 1 is plain Cartesian R."""
    o3 = pytest.importorskip("e3nn.o3")
    irreps = Irreps(((2, 0, 1), (1, 0, -1), (2, 1, -1), (1, 1, 1), (1, 2, 1), (1, 2, -1)))
    x = torch.randn(5, irreps.dim, dtype=torch.float64)
    R = random_rotation(generator=torch.Generator().manual_seed(1))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its D matrices in the default dtype
    try:
        Ds = [(M, o3.Irreps(str(irreps)).D_from_matrix(M)) for M in (R, -R, random_reflections(1)[0])]
    finally:
        torch.set_default_dtype(default)
    for M, D in Ds:
        torch.testing.assert_close(rotate_embeddings(x, irreps, M), x @ D.T, atol=1e-12, rtol=0)
    vec = Irreps(((3, 1, -1),))
    v = torch.randn(4, 9, dtype=torch.float64)
    torch.testing.assert_close(rotate_embeddings(v, vec, R), (v.view(4, 3, 3) @ R.T).reshape(4, 9))


def test_alignment_loss_is_zero_for_an_equivariant_map():
    pos = torch.randn(6, 3, dtype=torch.float64)
    irreps = Irreps(((1, 0, 1), (1, 1, -1)))

    def embed(p):
        c = p - p.mean(0)
        return torch.cat([c.norm(dim=1, keepdim=True), c * c.norm(dim=1, keepdim=True)], dim=1)

    M = random_reflections(1)[0]
    assert alignment_loss(embed(pos @ M.T), rotate_embeddings(embed(pos), irreps, M)) < 1e-28
    assert alignment_loss(embed(pos @ M.T), embed(pos)) > 1e-2  # vectors do move


def test_alignment_loss_measures_against_the_spread_within_each_element():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(8, 5, dtype=torch.float64, generator=gen)
    b = a + 0.01 * torch.randn(8, 5, dtype=torch.float64, generator=gen)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    offset = 100.0 * torch.randn(3, 5, dtype=torch.float64, generator=gen)[groups]  # per-element constants
    grouped = alignment_loss(a, b, groups)
    # a large invariant per-element offset hides the violation from the plain norm but not from the grouped one
    assert alignment_loss(a + offset, b + offset, groups) == pytest.approx(float(grouped), rel=1e-12)
    assert alignment_loss(a + offset, b + offset) < 1e-3 * float(grouped)
    # by hand: spread about each element's mean
    mean = torch.stack([a[groups == g].mean(0) for g in range(3)])[groups]
    mean_b = torch.stack([b[groups == g].mean(0) for g in range(3)])[groups]
    expected = (a - b).pow(2).sum() / (0.5 * ((a - mean).pow(2).sum() + (b - mean_b).pow(2).sum()))
    assert float(grouped) == pytest.approx(float(expected), rel=1e-12)


def test_alignment_only_training_reduces_violation(graphs):
    """Two dozen Adam steps on the alignment loss alone cut the rotation violation by > 10x (~100x in practice)."""
    model = _model().train()
    batch = _batch(graphs)

    def measure() -> float:
        state = torch.random.get_rng_state()
        torch.manual_seed(123)  # the same held-out rotations before and after
        value = model.regularizers(batch)["rotation"].item()
        torch.random.set_rng_state(state)
        return value

    before = measure()
    minimise_regularizers(model, batch)
    after = measure()
    assert after < before / 10, (before, after)


def test_random_rotate_batch_matches_emt_on_the_rotated_structure():
    """Forces and stress labels rotated by the augmentation equal EMT's own on the rotated atoms."""
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    atoms.numbers[3] = 79
    atoms.rattle(0.1, seed=1)
    atoms.calc = EMT()
    s = Structure.from_atoms(atoms)
    s = dataclasses.replace(
        s, energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress(voigt=False)
    )
    batch = collate_graphs([structure_to_graph(s, 4.0, dtype=torch.float64)])
    torch.manual_seed(7)
    moved = random_rotate_batch(batch, inversions=True)
    rotated = atoms.copy()
    rotated.set_cell(moved.cell[0].numpy())
    rotated.positions = moved.positions.numpy()
    rotated.calc = EMT()
    np.testing.assert_allclose(moved.forces.numpy(), rotated.get_forces(), atol=1e-10)
    np.testing.assert_allclose(moved.stress[0].numpy(), rotated.get_stress(voigt=False), atol=1e-10)
    assert moved.energy[0].item() == pytest.approx(rotated.get_potential_energy(), abs=1e-9)
    assert not torch.allclose(moved.positions, batch.positions)
    R = torch.linalg.lstsq(batch.edge_vectors(), moved.edge_vectors()).solution.T  # edges moved rigidly
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64))


def test_safe_eigh_gradients_match_autograd_and_stay_finite_when_degenerate():
    A = torch.randn(3, 3, dtype=torch.float64)
    A = (A + A.T).requires_grad_(True)
    B = torch.randn(3, 3, dtype=torch.float64)

    def f(M):  # depends on the eigenvectors only through sign-free quantities
        lam, U = safe_eigh(0.5 * (M + M.T))
        return lam.sum() + ((U.T @ B @ U) ** 2).sum()

    assert torch.autograd.gradcheck(f, (A,))
    assert torch.autograd.gradgradcheck(f, (A,))
    eye = torch.eye(3, dtype=torch.float64, requires_grad=True)  # triple eigenvalue: torch's eigh gives NaN
    (g,) = torch.autograd.grad(f(eye), eye)
    assert torch.isfinite(g).all()


# ------------------------------------------------------------------------------------ weights and config
@pytest.mark.parametrize(
    "changes,words",
    [
        ({"num_heads": 3}, "num_heads (3) must divide channels (8)"),
        ({"num_heads": 0}, "num_heads must be positive"),
        ({"vector_channels": -1}, "vector_channels must be >= 0"),
        ({"ff_hidden": 0}, "ff_hidden must be a positive integer"),
        ({"frame_averaging": "yes"}, "frame_averaging must be true or false"),
    ],
)
def test_config_rejects_bad_values(changes, words):
    with pytest.raises(ConfigError) as err:
        build_model(_config(**changes))
    assert words in str(err.value)


def test_sizes_and_embeddings(graphs):
    """Token width and declared irreps; no vector channels is allowed; a large recipe reaches ~10M parameters."""
    model = _model()
    emb, irreps = model.embed(_batch(graphs))
    assert str(irreps) == "8x0e+2x1o" and emb.shape == (_batch(graphs).num_atoms, 14)
    assert model.embed(_batch(graphs), layers="all")[0].shape[1] == 2 * 14
    scalars_only = _model(vector_channels=0)
    assert str(scalars_only.irreps) == "8x0e"
    assert torch.isfinite(scalars_only(_batch(graphs))["forces"]).all()
    large = build_model(
        tiny_config(
            "transip",
            channels=256,
            vector_channels=64,
            num_heads=8,
            num_interactions=7,
            radial_hidden=64,
            readout_hidden=128,
        )
    )
    n = sum(p.numel() for p in large.parameters())
    assert 8e6 < n < 12e6, n
