"""Checkpoint files: atomic writes, weights-only loading, clear errors, and older schemas migrated on load."""

from __future__ import annotations

import csv
import json

import ase.build
import ase.io
import pytest
import torch
from train_testlib import tiny_recipe
from typer.testing import CliRunner

from mlip_cli import checkpoint as ckpt_module
from mlip_cli.calculator import MLIPCalculator
from mlip_cli.checkpoint import CHECKPOINT_SCHEMA, CheckpointError, load_checkpoint, load_model, save_checkpoint
from mlip_cli.cli import app
from mlip_cli.models import build_model
from mlip_cli.models.config import migrate_flat_config
from mlip_cli.train import Recipe, run_training


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
    save_checkpoint(
        tmp_path / "m.pt",
        {
            "model_config": model.config.to_dict(),
            "dtype": "float32",
            "model_state": model.state_dict(),
            "ema_state": None,
        },
    )
    loaded = load_model(tmp_path / "m.pt", dtype="float64")
    fresh = build_model(model.config.to_dict(), dtype=torch.float64)
    for name, buffer in fresh.named_buffers():  # tensor-product constants rebuilt in float64, not rounded copies
        assert torch.equal(dict(loaded.named_buffers())[name], buffer), name
    for name, param in model.named_parameters():
        assert torch.equal(dict(loaded.named_parameters())[name], param.double()), name


# ModelConfig.to_dict() before the per-family split (schema 1): every family's fields, with their defaults.
PRE_SPLIT_CONFIG = {
    "family": "tdn",
    "elements": [],
    "cutoff": 5.0,
    "channels": 32,
    "lmax": 2,
    "num_interactions": 2,
    "num_radial": 8,
    "radial_hidden": 64,
    "radial_layers": 2,
    "envelope_p": 6,
    "readout_hidden": 16,
    "cp_rank": None,
    "gaunt_grid": "auto",
    "avg_num_neighbors": 1.0,
    "scale": 1.0,
    "shift": 0.0,
    "e0s": {},
    "message_backend": "auto",
    "num_heads": 4,
    "ff_hidden": None,
    "vector_channels": 8,
    "frame_averaging": False,
}


def as_schema_1(ckpt: dict) -> dict:
    """The checkpoint as mlip wrote it before issue 11: schema 1, the flat model config (the trainer then filled
    avg_num_neighbors from the data for every family), the train state a plain dict with today's keys, and the
    inversion's symmetry state under ``reflection``."""
    old = {k: v for k, v in ckpt.items() if k != "path"}
    old["schema"] = 1
    old["model_config"] = {
        **PRE_SPLIT_CONFIG,
        **ckpt["model_config"],
        "avg_num_neighbors": ckpt["statistics"]["avg_num_neighbors"],
    }
    sym = dict(ckpt["train_state"]["symmetry"])
    rename = {"inversion": "reflection"}
    for key, value in sym.items():
        if key == "types":
            sym[key] = [rename.get(t, t) for t in value]
        elif isinstance(value, dict):
            sym[key] = {rename.get(t, t): v for t, v in value.items()}
    old["train_state"] = {**ckpt["train_state"], "symmetry": sym}
    return old


def test_a_schema_1_checkpoint_resumes_exactly_and_loads_everywhere(tmp_path, small_data):
    def recipe(max_steps: int) -> Recipe:
        # constant rate: the schedule does not depend on the step limit, so 4 steps + 4 resumed = 8 in one go
        r = tiny_recipe(
            small_data,
            family="transip",
            optim={"schedule": "constant"},
            loss={"symmetry": "auto"},
            run={"max_steps": max_steps, "valid_every": 4, "augment_rotations": True},
        )
        r["model"].update({"vector_channels": 2, "num_heads": 2})
        return Recipe.from_dict(r)

    def numbers(run_dir) -> list[dict]:
        timing = {"elapsed_s", "structures_per_s", "data_s", "compute_s", "valid_s"}
        with open(run_dir / "metrics.csv", newline="") as f:
            return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(f)]

    run_training(recipe(8), tmp_path / "full")
    run = tmp_path / "old"
    run_training(recipe(4), run)
    new_format = load_checkpoint(run / "last.pt")
    new_copy = tmp_path / "new.pt"
    new_copy.write_bytes((run / "last.pt").read_bytes())
    for name in ("last.pt", "best.pt"):
        torch.save(as_schema_1(load_checkpoint(run / name)), run / name)
    metrics = (run / "metrics.csv").read_text()
    assert "symmetry_weight/inversion" in metrics
    (run / "metrics.csv").write_text(metrics.replace("/inversion", "/reflection"))  # as logged before the rename
    old_copy = tmp_path / "old.pt"
    old_copy.write_bytes((run / "last.pt").read_bytes())
    raw = torch.load(old_copy, weights_only=True)
    assert raw["schema"] == 1 and "lmax" in raw["model_config"]
    assert raw["train_state"]["symmetry"]["types"] == ["rotation", "reflection"]

    # load_checkpoint migrates: the current layout, equal to what this version writes
    migrated = load_checkpoint(old_copy)
    assert migrated["schema"] == CHECKPOINT_SCHEMA
    assert migrated["model_config"] == new_format["model_config"]
    assert migrated["train_state"]["symmetry"] == new_format["train_state"]["symmetry"]

    runner = CliRunner()
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "run.max_steps=8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert numbers(run) == numbers(tmp_path / "full")  # symmetry columns under their new names, same numbers
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "full" / "last.pt")
    assert a["schema"] == CHECKPOINT_SCHEMA and a["train_state"]["step"] == 8
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key

    # the readers of finished models see the same model in the old file as in the new one
    old_model, new_model = load_model(old_copy, dtype="float64"), load_model(new_copy, dtype="float64")
    for name, value in new_model.state_dict().items():
        assert torch.equal(old_model.state_dict()[name], value), name
    energies = []
    for path in (old_copy, new_copy):
        atoms = ase.io.read(small_data, index=0)
        atoms.calc = MLIPCalculator.from_checkpoint(path, dtype="float64")
        energies.append(atoms.get_potential_energy())
    assert energies[0] == energies[1]
    reports = []
    for path in (old_copy, new_copy):
        result = runner.invoke(app, ["eval", str(path), str(small_data), "--limit", "4", "--json", "--rotations", "1"])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout[result.stdout.index("{") :]))
    assert reports[0]["metrics"] == reports[1]["metrics"] and reports[0]["metrics"]["forces_rmse"] > 0
    assert reports[0]["equivariance"] == reports[1]["equivariance"]
    assert set(reports[0]["equivariance"]) == {"rotations", "structures", "rotation", "inversion"}


def test_a_schema_1_tdn_checkpoint_keeps_the_rank_its_factors_have(tmp_path):
    """Schema-1 ``tdn`` configs said ``cp_rank: null`` and meant that day's default (19 at L = 2); the shipped
    default has since dropped to 18, so the migration writes the old rank out and the stored factors still fit."""
    config = {**PRE_SPLIT_CONFIG, "elements": [1, 8], "channels": 8, "num_interactions": 3, "cp_rank": 19}
    torch.manual_seed(0)
    model = build_model(migrate_flat_config(config), dtype=torch.float64)
    path = tmp_path / "old.pt"
    old = {"kind": "mlip-checkpoint", "schema": 1, "dtype": "float64", "ema_state": None}
    torch.save({**old, "model_state": model.state_dict(), "model_config": {**config, "cp_rank": None}}, path)
    assert load_checkpoint(path)["model_config"]["cp_rank"] == 19
    loaded = load_model(path, dtype=torch.float64)
    atoms = ase.build.molecule("H2O")
    atoms.calc = MLIPCalculator(loaded)
    reference = MLIPCalculator(model)
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(atoms), rel=1e-12)
    assert build_model({"family": "tdn", "elements": [1], "lmax": 2}).config.cp_rank == 18  # new configs say it
