"""The exponential moving average of the weights against a hand computation of its ramp, and its state round trip."""

from __future__ import annotations

import torch
from torch import nn

from mlip_cli.train.ema import EMA


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.0, 10.0], dtype=torch.float64))
        self.register_buffer("counter", torch.tensor(0.0, dtype=torch.float64))


def test_ramp_matches_a_hand_computation():
    model = Tiny()
    ema = EMA(model, decay=0.5)
    expected = [0.0, 10.0]
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0], start=1):
        with torch.no_grad():
            model.w.copy_(torch.tensor([value, -value]))
            model.counter.fill_(n)
        ema.update(model)
        d = min(0.5, (1 + n) / (10 + n))  # 2/11, 3/12, ..., 6/15: the ramp, below the cap
        expected = [d * expected[0] + (1 - d) * value, d * expected[1] - (1 - d) * value]
        torch.testing.assert_close(ema.module.w, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)
        assert ema.module.counter.item() == n  # buffers are copied, not averaged
    # later, the cap: (1 + n) / (10 + n) passes 0.5 at n = 8
    for n in range(6, 10):
        ema.update(model)
        d = min(0.5, (1 + n) / (10 + n))
        expected = [d * expected[0] + (1 - d) * 5.0, d * expected[1] - (1 - d) * 5.0]
    assert d == 0.5
    torch.testing.assert_close(ema.module.w, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)
    assert not ema.module.training and not ema.module.w.requires_grad
    assert model.w.requires_grad  # the trained copy is untouched


def test_state_round_trip_continues_exactly():
    model = Tiny()
    ema = EMA(model, decay=0.9)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            model.w.fill_(value)
        ema.update(model)
    again = EMA(Tiny(), decay=0.9)
    again.load_state_dict(ema.state_dict(), ema.module.state_dict())
    assert again.num_updates == 3 and again.state_dict() == ema.state_dict()
    with torch.no_grad():
        model.w.fill_(7.0)
    ema.update(model)
    again.update(model)  # the fourth update uses the same ramp factor 5/14 in both
    assert torch.equal(again.module.w, ema.module.w)
