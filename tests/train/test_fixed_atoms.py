"""OC20 conventions: atoms held fixed in the DFT relaxation leave the force loss (``loss.forces_on: free``) and
the force metrics score free atoms (fairchem's convention), with all-atom errors reported beside them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip_cli.train.loss import weighted_loss
from mlip_cli.train.metrics import ErrorMetrics
from mlip_cli.train.recipe import LossSection
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure


def slab(n: int, fixed=None, tags=None, seed: int = 0) -> Structure:
    rng = np.random.default_rng(seed)
    return Structure(
        numbers=np.full(n, 29),
        positions=rng.uniform(0, 6, size=(n, 3)),
        energy=-float(n),
        forces=rng.normal(size=(n, 3)),
        fixed=fixed,
        tags=tags,
    )


def test_fixed_from_the_record_or_from_tags():
    marked = structure_to_graph(slab(4, fixed=[True, True, False, False]), 3.0)
    assert marked.fixed.tolist() == [True, True, False, False]
    tagged = slab(4, tags=[0, 0, 1, 2])
    assert structure_to_graph(tagged, 3.0).fixed is None  # tags alone say nothing
    assert structure_to_graph(tagged, 3.0, fixed_tags=[0]).fixed.tolist() == [True, True, False, False]
    # a record's own marks win over the tag rule
    both = slab(4, fixed=[False, False, False, True], tags=[0, 0, 1, 2])
    assert structure_to_graph(both, 3.0, fixed_tags=[0]).fixed.tolist() == [False, False, False, True]


def test_loss_and_metrics_on_free_atoms():
    a = slab(4, fixed=[True, True, False, False], seed=1)
    b = slab(3, seed=2)  # no fixed atoms known
    batch = collate_graphs([structure_to_graph(a, 3.0), structure_to_graph(b, 3.0)])
    assert batch.fixed.tolist() == [True, True, False, False, False, False, False]
    predicted = batch.forces + torch.arange(21, dtype=batch.forces.dtype).reshape(7, 3) / 10
    out = {"energy": batch.energy.clone(), "forces": predicted}

    free = np.array([False, False, True, True, True, True, True])
    err = (predicted - batch.forces).numpy()
    for forces_on, mask in (("free", free), ("all", np.ones(7, dtype=bool))):
        weights = LossSection(energy=0.0, forces=1.0, forces_on=forces_on)
        counts = torch.tensor([2.0, 3.0 * mask.sum(), 0.0], dtype=torch.float64)
        loss, _ = weighted_loss(batch, out, weights, counts)
        assert float(loss) == pytest.approx(float((err[mask] ** 2).sum() / (3 * mask.sum())), rel=1e-12)

    metrics = ErrorMetrics([29])
    metrics.update(batch, out)
    summary = metrics.summary()
    assert summary["forces_rmse"] == pytest.approx(1000 * np.sqrt((err[free] ** 2).mean()), rel=1e-12)
    assert summary["forces_all_rmse"] == pytest.approx(1000 * np.sqrt((err**2).mean()), rel=1e-12)
    assert summary["forces_all_mae"] == pytest.approx(1000 * np.abs(err).mean(), rel=1e-12)

    # without fixed atoms there is one force error, not two equal ones
    plain = ErrorMetrics([29])
    only_b = collate_graphs([structure_to_graph(b, 3.0)])
    plain.update(only_b, {"energy": only_b.energy.clone(), "forces": only_b.forces + 0.1})
    assert "forces_rmse" in plain.summary() and "forces_all_rmse" not in plain.summary()


def test_eval_reports_free_and_all_atom_force_errors(tmp_path, small_data):
    import json

    from cli_runner import mlip
    from train_testlib import tiny_recipe, write_recipe

    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 2}))
    assert mlip("train", recipe, "--out", run, "-q").exit_code == 0
    scored = mlip("eval", run, small_data, "--json", "--rotations", "0", "--parity", tmp_path / "p.png")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout)["metrics"]
    assert metrics["forces_rmse"] != metrics["forces_all_rmse"]  # the bottom layer of every slab is fixed
    table = mlip("eval", run, small_data, "--rotations", "0", "--parity", tmp_path / "p.png").output
    assert "forces, free atoms" in table and "forces, all atoms" in table
