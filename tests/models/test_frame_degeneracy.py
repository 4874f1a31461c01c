"""Frame averaging on structures whose principal axes are degenerate (TransIP, float64, random weights).

Symmetric tops (benzene) and cubic structures (CH4, SF6, fcc Cu, a pyrite-type crystal) have an edge covariance
with two or three equal eigenvalues, so principal axes alone leave the frame arbitrary; the frames built from
the edges there (:func:`~mlip_cli.models.soft_equivariance.averaging_frames`) must make the energy invariant and
the forces and stress equivariant to rounding, and stay differentiable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.spacegroup import crystal
from models_testlib import CUTOFF, assert_grad_matches_finite_difference, tiny_config

from mlip_cli.export import export_program
from mlip_cli.models import build_model
from mlip_cli.models.soft_equivariance import averaging_frames, random_reflections
from mlip_cli.models.symmetry import transform_batch
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure
from mlip_kernels.wigner import random_rotation

ELEMENTS = [1, 6, 9, 16, 29]


def _model(seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_config(
        "transip", elements=ELEMENTS, vector_channels=2, num_heads=2, ff_hidden=16, frame_averaging=True
    )
    return build_model(config, dtype=torch.float64).eval()


def _benzene() -> Atoms:
    """ASE's benzene (D6h to its 6 printed decimals), rebuilt as an exact hexagon with the same radii."""
    ase = molecule("C6H6")
    radius = np.linalg.norm(ase.positions[:, :2], axis=1)
    angle = np.arange(6) * np.pi / 3
    ring = np.stack([np.sin(angle), np.cos(angle), np.zeros(6)], axis=1)
    exact = np.concatenate([radius[:6].mean() * ring, radius[6:].mean() * ring])
    assert np.abs(exact - ase.positions).max() < 1e-5  # the same molecule: only its rounding is removed
    return Atoms(ase.numbers, positions=exact)


def _sf6() -> Atoms:
    """SF6 (not in ASE's g2 set): an octahedron, S-F 1.564 A."""
    d = 1.564
    arms = [[d, 0, 0], [-d, 0, 0], [0, d, 0], [0, -d, 0], [0, 0, d], [0, 0, -d]]
    return Atoms("SF6", positions=[[0.0, 0.0, 0.0]] + arms)


def _pyrite() -> Atoms:
    """A cubic crystal with forces: pyrite's structure (Pa-3) with Cu on the metal site, S at (x, x, x)."""
    return crystal(["Cu", "S"], basis=[(0, 0, 0), (0.385, 0.385, 0.385)], spacegroup=205, cellpar=[5.42] * 3 + [90] * 3)


STRUCTURES = {
    "CH4": lambda: molecule("CH4"),  # ASE's coordinates are signed permutations of one number: exactly Td
    "C6H6": _benzene,
    "SF6": _sf6,
    "Cu-fcc": lambda: bulk("Cu", "fcc", a=3.6, cubic=True),
    "Cu-fcc-primitive": lambda: bulk("Cu", "fcc", a=3.6),
    "pyrite": _pyrite,
}


def _graph(atoms: Atoms):
    s = Structure(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc)
    return structure_to_graph(s, CUTOFF, dtype=torch.float64)


def _batch(atoms: Atoms):
    return collate_graphs([_graph(atoms)])


def _frames(model, batch):
    vectors = batch.edge_vectors().to(torch.float64)
    weights = model.envelope(torch.linalg.vector_norm(vectors, dim=1))
    edge_graph = batch.batch.index_select(0, batch.edge_index[0])
    return averaging_frames(vectors, weights, edge_graph, batch.num_graphs)


def _assert_invariant(model, batch):
    """Energy to 1e-10 relative, forces and stress to 1e-8 of their largest entry, under two
    rotations, an inversion composed with a rotation, and a mirror."""
    ref = model(batch, compute_stress=True)
    gen = torch.Generator().manual_seed(11)
    rotations = random_rotation(3, generator=gen)
    for g in (rotations[0], rotations[1], -rotations[2], random_reflections(1, generator=gen)[0]):
        _compare(model, batch, ref, g[None])


def _compare(model, batch, ref, g):
    out = model(transform_batch(batch, g), compute_stress=True)
    assert abs(out["energy"] - ref["energy"]).item() <= 1e-10 * abs(ref["energy"]).item()
    f_scale = ref["forces"].abs().max().item()
    f_err = (out["forces"] - ref["forces"] @ g[0].T).abs().max().item()
    assert f_err <= 1e-8 * f_scale or f_err < 1e-13, (f_err, f_scale)  # a perfect lattice has no forces at all
    s_err = (out["stress"] - g @ ref["stress"] @ g.transpose(1, 2)).abs().max().item()
    assert s_err <= 1e-8 * ref["stress"].abs().max().item() or s_err < 1e-15


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_symmetric_structure_is_exactly_invariant(name):
    model = _model()
    atoms = STRUCTURES[name]()
    batch = _batch(atoms)
    assert 0 in _frames(model, batch).degenerate  # the covariance is degenerate: the edge-built frames are used
    if atoms.pbc.any():
        assert model(batch, compute_stress=True)["stress"].abs().max() > 1e-4
    if name not in ("Cu-fcc", "Cu-fcc-primitive"):  # every atom of fcc is a centre of inversion: no forces
        assert model(batch)["forces"].abs().max() > 1e-4
    _assert_invariant(model, batch)


@pytest.mark.parametrize("name", ["CH4", "C6H6", "SF6", "Cu-fcc", "pyrite"])
def test_rattled_structure_is_exactly_invariant(name):
    """1e-3 A off the symmetric geometry the axes are distinct again (principal axes, 8 frames)."""
    model = _model()
    atoms = STRUCTURES[name]()
    atoms.rattle(1e-3, seed=2)
    batch = _batch(atoms)
    assert not _frames(model, batch).degenerate
    _assert_invariant(model, batch)


@pytest.mark.parametrize("name", ["CH4", "C6H6", "SF6", "Cu-fcc"])
def test_forces_and_stress_at_degeneracy_are_derivatives(name):
    """Scaling a symmetric structure keeps its symmetry (and the edge-built frames): the energy's central
    difference along that breathing path equals ``-sum F . x`` (molecules) or the trace of the stress times the
    volume (crystals). For CH4 and SF6 the symmetric forces have only this one component, so this checks them
    fully."""
    model = _model()
    atoms = STRUCTURES[name]()
    batch = _batch(atoms)
    out = model(batch, compute_stress=True)
    h = 1e-5

    def energy(scale: float) -> float:
        moved = dataclasses.replace(batch, positions=batch.positions * scale, cell=batch.cell * scale)
        assert 0 in _frames(model, moved).degenerate
        return model(moved, compute_forces=False)["energy"].item()

    fd = (energy(1 + h) - energy(1 - h)) / (2 * h)
    if atoms.pbc.any():
        expected = torch.linalg.det(batch.cell[0]).abs() * torch.diagonal(out["stress"][0]).sum()
    else:
        expected = -(out["forces"] * batch.positions).sum()
    assert abs(expected) > 1e-4
    assert abs(fd - expected.item()) < 1e-7 * (1 + abs(expected.item()))


def test_force_loss_gradients_at_degeneracy_are_finite_and_right():
    """Training through the frames of a degenerate structure (double backward): finite gradients, equal to the
    central difference in a weight (which leaves the geometry, hence the frames, alone)."""
    model = _model().train()
    param = model.blocks[0].edge_kv.weight
    for name in ("CH4", "C6H6", "SF6", "Cu-fcc"):
        batch = _batch(STRUCTURES[name]())

        def loss():
            out = model(batch, compute_stress=True)
            return out["forces"].pow(2).sum() + out["energy"].pow(2).sum() + out["stress"].pow(2).sum()

        grads = torch.autograd.grad(loss(), list(model.parameters()), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), name
        (g,) = torch.autograd.grad(loss(), [param])
        assert abs(g[0, 0]) > 1e-8, name
        assert_grad_matches_finite_difference(loss, param, g)


def test_batch_with_degenerate_structures_equals_each_alone():
    """Frames are per structure: mixing degenerate and ordinary structures changes nothing."""
    model = _model()
    rattled = molecule("CH4")
    rattled.rattle(0.05, seed=1)
    parts = [STRUCTURES["SF6"](), rattled, STRUCTURES["pyrite"](), STRUCTURES["C6H6"]()]
    graphs = [_graph(a) for a in parts]
    together = model(collate_graphs(graphs), compute_stress=True)
    start = 0
    for b, graph in enumerate(graphs):
        alone = model(collate_graphs([graph]), compute_stress=True)
        n = graph.natoms
        torch.testing.assert_close(together["energy"][b], alone["energy"][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(together["forces"][start : start + n], alone["forces"], rtol=0, atol=1e-12)
        torch.testing.assert_close(together["stress"][b], alone["stress"][0], rtol=0, atol=1e-12)
        start += n


def test_direct_call_without_node_graph_treats_all_atoms_as_one_structure():
    """``interaction_energies`` on a two-structure batch: with ``node_graph`` it gives each structure its own frames
    (as ``forward``), without it the frames of one structure holding both molecules (far apart)."""
    model = _model()
    sf6, ch4 = STRUCTURES["SF6"](), molecule("CH4")
    ch4.rattle(0.05, seed=1)
    ch4.positions += 20.0
    batch = collate_graphs([_graph(sf6), _graph(ch4)])
    species = model.element_table(batch.numbers)
    vectors = batch.edge_vectors().to(torch.float64)
    src, dst = batch.edge_index
    n = batch.num_atoms

    def per_atom(out):  # forward's per-atom energies, before scale/shift and references
        return (out["node_energy"] - model.reference(species).double() - model.config.shift) / model.config.scale

    with torch.no_grad():
        apart = model.interaction_energies(species, vectors, src, dst, n, node_graph=batch.batch, num_graphs=2)
        together = model.interaction_energies(species, vectors, src, dst, n)
        merged = model(_batch(sf6 + ch4), compute_forces=False)
    torch.testing.assert_close(apart, per_atom(model(batch, compute_forces=False)), rtol=0, atol=1e-12)
    torch.testing.assert_close(together, per_atom(merged), rtol=0, atol=1e-12)
    assert (together - apart).abs().max() > 1e-6  # the frames differ


def test_export_with_frame_averaging_equals_the_python_model_off_degeneracy():
    """``mlip export`` traces symbolically and cannot branch on the eigenvalues: its program keeps the principal
    axes, which equal the Python model wherever they are distinct (a rattled crystal and molecule here)."""
    model = _model()
    program = export_program(model).module()
    for name in ("pyrite", "CH4"):
        atoms = STRUCTURES[name]()
        atoms.rattle(0.02, seed=4)
        batch = _batch(atoms)
        want = model(batch, compute_stress=True)
        scalar = torch.zeros((), dtype=torch.float64)
        energy, forces, stress = program(
            batch.positions, batch.numbers, batch.cell[0], batch.pbc[0], batch.edge_index, batch.shifts, scalar, scalar
        )
        torch.testing.assert_close(energy, want["energy"][0], rtol=1e-10, atol=0)
        torch.testing.assert_close(forces, want["forces"], rtol=0, atol=1e-10 * want["forces"].abs().max().item())
        torch.testing.assert_close(
            stress, want["stress"][0], rtol=0, atol=1e-10 * want["stress"].abs().max().item() + 1e-300
        )
