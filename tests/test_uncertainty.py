"""Calibration statistics of mlip_cli.uncertainty against scipy and closed forms."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import scipy.stats
import torch
from ase.build import bulk, molecule
from tiny_models import tiny_config

from mlip_cli.models import build_model
from mlip_cli.uncertainty import (
    STD_FLOOR,
    average_ranks,
    calibration_curve,
    gaussian_nll,
    miscalibration_area,
    spearman,
    structure_uncertainty,
)
from mlip_datasets.graph import collate_graphs, structure_to_graph
from mlip_datasets.record import Structure


@pytest.mark.parametrize("seed", range(4))
def test_spearman_and_ranks_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=40).astype(float)  # many ties
    y = x + rng.integers(-3, 4, size=40)
    np.testing.assert_array_equal(average_ranks(x), scipy.stats.rankdata(x))
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, rel=1e-12)
    z = rng.normal(size=25)
    w = rng.normal(size=25)
    assert spearman(z, w) == pytest.approx(scipy.stats.spearmanr(z, w).statistic, rel=1e-12)


def test_spearman_of_monotone_and_constant_data():
    x = np.array([0.1, 0.5, 0.2, 3.0])
    assert spearman(x, np.exp(x)) == 1.0
    assert spearman(x, -x) == -1.0
    assert math.isnan(spearman(x, np.ones(4)))
    assert math.isnan(spearman([1.0], [2.0]))
    with pytest.raises(ValueError, match="one length"):
        spearman(x, x[:3])


def test_gaussian_nll_is_the_normal_log_density_with_a_floor():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.01, 0.5, size=200)
    std[:5] = 0.0  # K identical members: no spread
    error = rng.normal(size=200) * 0.1
    expected = -scipy.stats.norm.logpdf(error, scale=np.maximum(std, STD_FLOOR)).mean()
    assert gaussian_nll(error, std) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(gaussian_nll(np.zeros(3), np.zeros(3)))


@pytest.mark.parametrize("overconfidence", [1.0, 3.0])
def test_miscalibration_area_of_gaussian_errors_is_the_closed_form(overconfidence):
    """Errors ``N(0, (c s)^2)`` scored with std ``s``: the fraction inside the p-interval is ``2 Phi(z_p / c) - 1``,
    so the area is the mean of ``|2 Phi(z_p / c) - 1 - p|`` (0 when calibrated)."""
    rng = np.random.default_rng(1)
    std = rng.uniform(0.05, 1.0, size=200_000)
    error = rng.normal(size=std.size) * std * overconfidence
    normal = NormalDist()
    p = (np.arange(100) + 0.5) / 100
    observed = np.array([2 * normal.cdf(normal.inv_cdf(0.5 + q / 2) / overconfidence) - 1 for q in p])
    expected = float(np.mean(np.abs(observed - p)))
    assert miscalibration_area(error, std) == pytest.approx(expected, abs=5e-3)
    if overconfidence > 1:
        assert expected > 0.2


def test_calibration_curve_bins_by_predicted_std():
    std = np.array([4.0, 1.0, 3.0, 2.0])
    error = np.array([4.0, -1.0, 0.0, 2.0])
    curve = calibration_curve(error, std, bins=2)
    np.testing.assert_allclose(curve["rmv"], [math.sqrt((1 + 4) / 2), math.sqrt((9 + 16) / 2)])
    np.testing.assert_allclose(curve["rmse"], [math.sqrt((1 + 4) / 2), math.sqrt(16 / 2)])
    np.testing.assert_array_equal(curve["count"], [2, 2])


def test_structure_uncertainty_per_structure_of_a_batch():
    torch.manual_seed(0)
    model = build_model({**tiny_config("tdn", lmax=1), "ensemble": 3}, dtype=torch.float64).eval()
    water, cu = molecule("H2O"), bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    cu.rattle(0.1, seed=0)
    structures = [Structure.from_atoms(a) for a in (water, cu)]
    batch = collate_graphs([structure_to_graph(s, model.cutoff, model.dtype) for s in structures])
    out = model(batch)
    std = out["forces_std"].detach().numpy()
    per_atom = out["forces_uncertainty"].detach().numpy()
    rms = structure_uncertainty(out, batch).numpy()
    np.testing.assert_allclose(rms, [np.sqrt(np.mean(std[:3] ** 2)), np.sqrt(np.mean(std[3:] ** 2))], rtol=1e-12)
    largest = structure_uncertainty(out, batch, reduce="max").numpy()
    np.testing.assert_array_equal(largest, [per_atom[:3].max(), per_atom[3:].max()])
    only_oxygen = torch.tensor([True, False, False, True, True])
    masked = structure_uncertainty(out, batch, mask=only_oxygen).numpy()
    np.testing.assert_allclose(masked[0], np.sqrt(np.mean(std[0] ** 2)), rtol=1e-12)
    with pytest.raises(ValueError, match="ensemble"):
        structure_uncertainty({"forces": out["forces"]}, batch)
