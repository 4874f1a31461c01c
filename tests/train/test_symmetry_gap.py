"""The symmetrisation gap: zero for an exactly symmetric model, about the labels' asymmetric share when the
prediction needs the broken symmetry, negative when the model's asymmetry is noise the labels do not have."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip_cli.evaluation import open_graphs
from mlip_cli.train.symmetry_gap import symmetrization_gaps
from mlip_datasets.generate import generate
from mlip_datasets.io import write_dataset


def pair_energy(pos):  # rotation-, inversion- and translation-invariant
    d = torch.cdist(pos, pos)
    return torch.exp(-d).sum() / 2


def uniaxial_energy(pos):  # invariant under the inversion, not under rotations
    c = pos - pos.mean(0)
    return 0.3 * (c[:, 2] ** 2).sum()


def tilted_energy(pos):  # invariant + a small term that is neither rotation- nor inversion-invariant
    return pair_energy(pos) + 0.05 * (pos - pos.mean(0))[:, 0].pow(3).sum()


class ToyModel(torch.nn.Module):
    """``model(batch, compute_forces=True)`` for an energy written as a function of one structure's positions."""

    def __init__(self, energy_fn):
        super().__init__()
        self.energy_fn = energy_fn

    def forward(self, batch, compute_forces=True):
        pos = batch.positions.detach().clone().requires_grad_(True)
        energy = torch.stack([self.energy_fn(pos[batch.batch == b]) for b in range(batch.num_graphs)])
        (grad,) = torch.autograd.grad(energy.sum(), pos)
        return {"energy": energy.detach(), "forces": -grad}


def labelled(tmp_path, energy_fn, name, noise=0.0):
    """Randomly oriented molecules labelled by ``energy_fn`` (+ Gaussian force noise)."""
    rng = np.random.default_rng(0)
    frames = list(generate("molecule", 24, seed=1, random_orientation=True))
    for f in frames:
        pos = torch.tensor(f.positions, requires_grad=True)
        e = energy_fn(pos)
        (g,) = torch.autograd.grad(e, pos)
        f.energy, f.forces = float(e.detach()), -g.numpy() + noise * rng.normal(size=f.positions.shape)
    path = tmp_path / f"{name}.extxyz"
    write_dataset(path, frames)
    return open_graphs(path, 4.0, torch.float64)


def gaps(model, graphs):
    return symmetrization_gaps(model, graphs, 8, torch.device("cpu"))


def test_gap_is_zero_for_a_symmetric_model(tmp_path):
    graphs = labelled(tmp_path, uniaxial_energy, "uniaxial", noise=0.01)
    g = gaps(ToyModel(pair_energy), graphs)
    assert abs(g["rotation"]) < 1e-10 and abs(g["inversion"]) < 1e-10


def test_gap_finds_the_symmetry_the_labels_break(tmp_path):
    graphs = labelled(tmp_path, uniaxial_energy, "uniaxial", noise=0.01)
    g = gaps(ToyModel(uniaxial_energy), graphs)  # the model has learned the labels' easy axis
    # every label force comes from the easy axis: averaging over 4 rotations removes most of the labels' variance
    assert 0.5 < g["rotation"] < 1.1
    assert abs(g["inversion"]) < 1e-10  # the labels keep the inversion, and so does the model


def test_gap_is_negative_when_the_asymmetry_is_noise(tmp_path):
    graphs = labelled(tmp_path, pair_energy, "pairs")
    g = gaps(ToyModel(tilted_energy), graphs)  # symmetric labels, a model with an accidental asymmetric term
    # the odd term is all of the error and the inversion average removes it exactly: gap = -T(f) / T(0)
    forces = torch.cat([graphs.batch([i]).forces for i in range(len(graphs))])
    model_forces = torch.cat([ToyModel(tilted_energy)(graphs.batch([i]))["forces"] for i in range(len(graphs))])
    expected = -float((model_forces - forces).pow(2).sum() / forces.pow(2).sum())
    assert expected < -1e-3 and g["inversion"] == pytest.approx(expected, rel=1e-9)
    assert g["rotation"] < 0.5 * expected  # 4 random rotations remove most of it too
