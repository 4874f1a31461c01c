"""The learning-rate schedule against hand-computed rates: warmup, cosine over steps and over a time budget,
reduce-on-plateau, and a state round trip that continues exactly."""

from __future__ import annotations

import io
import math

import pytest
import torch

from mlip_cli.train.schedule import LRSchedule, progress_fraction


def test_linear_warmup_then_constant():
    s = LRSchedule(2.0, "constant", warmup_steps=4)
    assert [s.lr(step, 0.0) for step in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0], abs=1e-15)
    assert LRSchedule(2.0, "constant", warmup_steps=0).lr(0, 0.0) == 2.0


def test_cosine_over_steps_ends_at_the_floor():
    s = LRSchedule(2.0, "cosine", warmup_steps=0, min_lr_ratio=0.1)
    # by hand: 2 * (0.1 + 0.9 * (1 + cos(pi p)) / 2)
    hand = {0: 2.0, 25: 2 * (0.1 + 0.45 * (1 + math.sqrt(0.5))), 50: 1.1, 100: 0.2}
    for step, expected in hand.items():
        assert s.lr(step, progress_fraction(step, elapsed=999.0, total_steps=100, time_budget=None)) == pytest.approx(
            expected, rel=1e-12
        )
    assert s.lr(150, progress_fraction(150, 0.0, 100, None)) == pytest.approx(0.2, rel=1e-12)  # clamped
    # warmup multiplies the cosine: step 0 of 4 warmup steps at progress 0.5
    assert LRSchedule(2.0, "cosine", warmup_steps=4, min_lr_ratio=0.1).lr(0, 0.5) == pytest.approx(1.1 / 4)


def test_cosine_over_a_time_budget():
    s = LRSchedule(1.0, "cosine", warmup_steps=0, min_lr_ratio=0.0)
    # without a step limit the clock decides: 15 s of a 60 s budget is a quarter of the way
    p = progress_fraction(step=7, elapsed=15.0, total_steps=None, time_budget=60.0)
    assert p == 0.25
    assert s.lr(7, p) == pytest.approx(0.5 * (1 + math.sqrt(0.5)), rel=1e-12)
    assert s.lr(7, progress_fraction(7, 60.0, None, 60.0)) == pytest.approx(0.0, abs=1e-15)
    # a step limit known in advance wins over the clock; with neither, the rate stays at the start
    assert progress_fraction(step=3, elapsed=59.0, total_steps=12, time_budget=60.0) == 0.25
    assert progress_fraction(step=3, elapsed=59.0, total_steps=None, time_budget=None) == 0.0


def test_plateau_halves_after_patience_and_stops_at_the_floor():
    s = LRSchedule(1.0, "plateau", warmup_steps=0, min_lr_ratio=0.2, factor=0.5, patience=2)
    s.observe(1.0)  # first value: the best so far
    s.observe(0.99995)  # better by less than 1e-4 relative: counts as no improvement
    assert s.lr(10, 0.0) == 1.0
    s.observe(float("nan"))  # ignored
    s.observe(1.0)
    assert s.lr(10, 0.0) == 0.5
    s.observe(0.5)  # a real improvement resets the count
    s.observe(0.6)
    assert s.lr(10, 0.0) == 0.5
    for _ in range(3):  # bad validations 2 (halve), 1, 2 (halve)
        s.observe(0.6)
    assert s.plateau_scale == 0.125 and s.lr(10, 0.0) == 0.2  # 1 -> 0.5 -> 0.25 -> 0.125, floored at 0.2
    cosine = LRSchedule(1.0, "cosine", warmup_steps=0)
    for _ in range(10):
        cosine.observe(1.0)  # only the plateau schedule reacts
    assert cosine.lr(0, 0.0) == 1.0


def test_state_round_trip_continues_exactly():
    a = LRSchedule(1.0, "plateau", warmup_steps=0, min_lr_ratio=0.01, factor=0.5, patience=3)
    for metric in (1.0, 0.8, 0.9, 0.9):  # best 0.8, two validations without improvement
        a.observe(metric)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # plain data: loads without code
    buf.seek(0)
    b = LRSchedule(1.0, "plateau", warmup_steps=0, min_lr_ratio=0.01, factor=0.5, patience=3)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.state_dict() == a.state_dict()
    a.observe(0.85)
    b.observe(0.85)
    # the restored count (2 bad validations) reaches the patience with the next one: both halve now
    assert b.lr(5, 0.0) == a.lr(5, 0.0) == 0.5
    for _ in range(3):
        a.observe(0.85)
        b.observe(0.85)
        assert b.lr(5, 0.0) == a.lr(5, 0.0)
    assert a.lr(5, 0.0) == 0.25


def test_a_changed_horizon_on_resume_never_raises_the_rate():
    s = LRSchedule(1.0, "cosine", warmup_steps=0, min_lr_ratio=0.1)
    reached = s.lr(50, 0.5)  # half of a 100-step run
    # the run is resumed at step 50 with max_steps 200: plain cosine would jump back up to lr(50/200)
    assert s.lr(50, 0.25) > reached
    s.replan(before=0.5, after=0.25)
    assert s.lr(50, 0.25) == pytest.approx(reached, rel=1e-12)  # continuous at the resume point
    rates = [s.lr(step, step / 200) for step in range(50, 201)]
    assert all(b <= a for a, b in zip(rates, rates[1:]))  # never rises
    assert rates[-1] == pytest.approx(0.1, rel=1e-12)  # reaches the floor at the new end
    # halfway through what is left: the cosine's midpoint between the rate reached and the floor
    assert s.lr(125, 125 / 200) == pytest.approx(0.1 + (reached - 0.1) * 0.5, rel=1e-12)
    # a shorter horizon decays faster from the same rate, and its state survives a round trip
    t = LRSchedule(1.0, "cosine", warmup_steps=0, min_lr_ratio=0.1)
    t.replan(before=0.5, after=50 / 60)
    u = LRSchedule(1.0, "cosine", warmup_steps=0, min_lr_ratio=0.1)
    u.load_state_dict(t.state_dict())
    assert u.lr(55, 55 / 60) == t.lr(55, 55 / 60) < reached
    assert u.lr(60, 1.0) == pytest.approx(0.1, rel=1e-12)


def test_resume_with_more_steps_continues_the_decay(tmp_path, small_data):
    import csv
    import subprocess
    import sys

    from train_testlib import tiny_recipe, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(small_data, run={"max_steps": 8, "valid_every": 4}))
    run = tmp_path / "run"

    def train(*args):
        done = subprocess.run([sys.executable, "-m", "mlip_cli", "train", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    train(str(recipe), "--out", str(run), "--quiet")
    resumed = train("--resume", str(run), "--set", "run.max_steps=16")
    assert "the learning rate continues from" in resumed.stderr
    with open(run / "metrics.csv", newline="") as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f)]
    assert len(rates) == 4  # validations at steps 4, 8 (first run), 12, 16 (resumed)
    assert rates[2] <= rates[1] and rates[3] <= rates[2]
