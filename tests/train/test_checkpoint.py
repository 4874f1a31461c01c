"""Checkpoint files: atomic writes, weights-only loading, clear errors."""

from __future__ import annotations

import pytest
import torch

from mlip_cli import checkpoint as ckpt_module
from mlip_cli.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from mlip_cli.models import build_model


def payload(value: float) -> dict:
    return {"model_config": {}, "model_state": {"w": torch.full((3,), value)}, "ema_state": None}


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload(1.0))

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of torch.save

    monkeypatch.setattr(ckpt_module.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, payload(2.0))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.full((3,), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="without best.pt or last.pt"):
        load_checkpoint(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable mlip checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "future.pt", payload(0.0))
    data = torch.load(tmp_path / "future.pt", weights_only=True)
    data["schema"] = 99
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="schema 99 is newer"):
        load_checkpoint(tmp_path / "future.pt")


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_code_in_a_checkpoint_is_never_run(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"kind": "mlip-checkpoint", "schema": 1, "model_state": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable mlip checkpoint"):
        load_checkpoint(path)


def test_float32_checkpoint_loads_as_float64_with_exact_constants(tmp_path):
    model = build_model({"family": "tdn", "elements": [1, 8], "channels": 4, "lmax": 2, "num_interactions": 3})
    save_checkpoint(tmp_path / "m.pt", {"model_config": model.config.to_dict(), "dtype": "float32",
                                        "model_state": model.state_dict(), "ema_state": None})
    loaded = load_model(tmp_path / "m.pt", dtype="float64")
    fresh = build_model(model.config.to_dict(), dtype=torch.float64)
    for name, buffer in fresh.named_buffers():  # tensor-product constants rebuilt in float64, not rounded copies
        assert torch.equal(dict(loaded.named_buffers())[name], buffer), name
    for name, param in model.named_parameters():
        assert torch.equal(dict(loaded.named_parameters())[name], param.double()), name
