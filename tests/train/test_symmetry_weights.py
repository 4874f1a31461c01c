"""Automatic symmetry weights (a training controller): dual ascent on the violations, release of a symmetry the
data breaks, fixed weights, state round trip, and bad settings named."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from mlip_cli.train.symmetry_weights import AutoSymmetryWeights


def test_auto_symmetry_weights_follow_the_violation():
    w = AutoSymmetryWeights(target=1e-2, lr=0.1, beta=0.0, hold_floor=0.5)
    for _ in range(10):
        w.update({"rotation": 0.5, "inversion": 1e-4})
    assert w["rotation"] > 2.0  # above target: the weight grows
    assert w["inversion"] == 0.5  # below target: shrinks to the floor of a holding symmetry and no further
    w.update({"rotation": float("nan")})  # a bad measurement is skipped
    assert np.isfinite(w["rotation"])
    before = w["rotation"]
    w.update({"rotation": 1e-4})
    assert w["rotation"] < before
    buf = io.BytesIO()
    torch.save(w.state_dict(), buf)
    buf.seek(0)
    again = AutoSymmetryWeights()  # default types: the generators of O(3)
    assert again.types == ("rotation", "inversion")
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert again.state_dict() == w.state_dict()
    assert again.log()["symmetry_weight/rotation"] == w["rotation"]
    with pytest.raises(ValueError, match="unknown types"):
        w.update({"translation": 1.0})
    fixed = AutoSymmetryWeights(init={"rotation": 0.0, "inversion": 2.0}, lr=0.0)  # recipe numbers, e.g. 0 = off
    fixed.update({"rotation": 1.0, "inversion": 0.0})
    assert fixed.weights == {"rotation": 0.0, "inversion": 2.0} and fixed.log()["symmetry_violation/rotation"] == 1.0


def test_auto_symmetry_weights_release_a_symmetry_the_data_breaks():
    w = AutoSymmetryWeights(target=1e-2, lr=0.1, beta=0.0, floor=1e-3, gap_beta=0.0)
    w.update({"rotation": 0.5, "inversion": 0.5})  # far above target
    w.update_gaps({"rotation": 3.0, "inversion": -0.1})
    # a model that is not yet equivariant says nothing about the labels: its gap does not count
    assert not w.released("rotation") and w.log()["symmetry_gap/rotation"] == 3.0
    for _ in range(3):
        w.update({"rotation": 1e-3, "inversion": 1e-3})  # on target now
    w.update_gaps({"rotation": 3.0, "inversion": -0.1})
    assert w.released("rotation") and not w.released("inversion")
    assert w.log()["symmetry_holds/rotation"] == 0 and w.log()["symmetry_holds/inversion"] == 1
    for _ in range(200):  # released: the weight decays to the floor even while the violation grows
        w.update({"rotation": 0.5, "inversion": 0.5})
    assert w["rotation"] == 1e-3 and w["inversion"] > 1.0
    w.update_gaps({"rotation": -0.2, "inversion": -0.1})  # the gap closes: enforced again
    assert not w.released("rotation")
    w.update({"rotation": 1e-4, "inversion": 0.5})
    assert w["rotation"] == 1.0  # back at (at least) the floor of a holding symmetry
    again = AutoSymmetryWeights()
    again.load_state_dict(w.state_dict())
    assert again.state_dict() == w.state_dict()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(target=0.0),
        dict(lr=-1.0),
        dict(beta=1.0),
        dict(floor=0.0),
        dict(hold_floor=1e-4),
        dict(types=("rotation", "rotation")),
        dict(init={"rotation": 1.0}),
        dict(init=-1.0),
    ],
)
def test_auto_symmetry_weights_reject_bad_settings(kwargs):
    with pytest.raises(Exception, match="symmetry weights"):
        AutoSymmetryWeights(**kwargs)
