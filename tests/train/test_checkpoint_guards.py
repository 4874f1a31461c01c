"""Checkpoint and model-config guards (issue 12): a checkpoint relabelled as another family is refused, files
of older schemas still load, oversized configs are refused before anything is allocated, and a file holding
code gets one line without torch's advice to load it unsafely."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import torch
from tiny_models import tiny_config
from typer.testing import CliRunner

from mlip_cli.checkpoint import CHECKPOINT_SCHEMA, CheckpointError, load_checkpoint, load_model, save_checkpoint
from mlip_cli.cli import app
from mlip_cli.models import ModelConfig, build_model
from mlip_cli.models.config import ConfigError
from mlip_cli.models.equivariant import MAX_LMAX


def write_checkpoint(path, family: str = "tdn", num_interactions: int = 2):
    torch.manual_seed(0)
    model = build_model(tiny_config(family, num_interactions=num_interactions))
    payload = {
        "model_config": model.config.to_dict(),
        "dtype": "float32",
        "model_state": model.state_dict(),
        "ema_state": None,
    }
    save_checkpoint(path, payload)
    return model


def relabel(path, family: str) -> None:
    """Edit ``model_config.family`` in the file, as a user might by hand."""
    data = torch.load(path, weights_only=True)
    data["model_config"].pop("cp_rank", None)  # a tdn-only key
    data["model_config"]["family"] = family
    torch.save(data, path)


@pytest.mark.parametrize("num_interactions", [2, 3])  # 2: every tensor has the same shape in tdn and gaunt
def test_a_tdn_checkpoint_relabelled_gaunt_is_refused(tmp_path, num_interactions):
    path = tmp_path / "m.pt"
    write_checkpoint(path, "tdn", num_interactions)
    assert load_checkpoint(path)["architecture"]["family"] == "tdn"
    relabel(path, "gaunt")
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "'tdn'" in message and "'gaunt'" in message
    assert path.read_bytes() == before  # nothing rewritten

    result = CliRunner().invoke(app, ["eval", str(path), str(tmp_path / "none.xyz")])
    assert result.exit_code == 2
    assert "written by a 'tdn' model" in result.output


def test_weights_of_another_shape_are_one_line(tmp_path):
    path = tmp_path / "m.pt"
    write_checkpoint(path, "tdn", 3)
    data = torch.load(path, weights_only=True)
    data["model_config"]["cp_rank"] = 30  # the stored factors have the default rank
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"tensor 'blocks\.1\.conv\.A' was written with shape") as err:
        load_model(path)
    assert "\n" not in str(err.value)
    # an old file has no fingerprint: the state-dict shapes still give one line, not torch's RuntimeError
    data["schema"], data["architecture"] = 2, None
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="weights do not fit the stored model config .size mismatch") as err:
        load_model(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("schema", [1, 2])
def test_old_schema_files_without_a_fingerprint_still_load(tmp_path, schema):
    path = tmp_path / "old.pt"
    model = write_checkpoint(path, "gaunt", 3)
    data = torch.load(path, weights_only=True)
    del data["architecture"]
    data["schema"] = schema
    torch.save(data, path)
    migrated = load_checkpoint(path)
    assert migrated["schema"] == CHECKPOINT_SCHEMA and migrated["architecture"] is None
    loaded = load_model(path)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"family": "tdn", "channels": 4096}, "channels=4096"),
        ({"family": "gaunt", "channels": 4096}, "channels=4096"),
        ({"family": "cg", "num_interactions": 100000}, "num_interactions=100000"),
        ({"family": "tdn", "lmax": 40}, "lmax must be <= 6"),
        ({"family": "cg", "lmax": MAX_LMAX + 1}, f"lmax must be <= {MAX_LMAX}"),
        ({"family": "transip", "channels": 4096, "num_heads": 4}, "channels=4096"),
        ({"family": "transip", "ff_hidden": 10**9}, "ff_hidden=1000000000"),
    ],
)
def test_huge_configs_are_refused_before_building(changes, key):
    cfg = {k: v for k, v in tiny_config(changes["family"]).items() if k != "lmax" or "lmax" in changes}
    cfg.update(changes)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict(cfg)
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "\n" not in message and key in message
    assert "lmax must be" in message or "above the limit of 1e+08" in message


def test_largest_allowed_configs_still_build():
    for family in ("tdn", "gaunt", "cg"):
        assert ModelConfig.from_dict(tiny_config(family, lmax=MAX_LMAX)).lmax == MAX_LMAX
    assert ModelConfig.from_dict(tiny_config("tdn", channels=512)).channels == 512
    assert ModelConfig.from_dict(tiny_config("transip", channels=512)).channels == 512


def test_a_huge_config_through_the_cli_allocates_nothing(tmp_path):
    """``mlip train`` with ``channels: 4096`` stops at the config check: exit 2, one line, peak memory of the
    process about what importing mlip costs."""
    script = textwrap.dedent(
        """
        import resource, sys
        sys.path.insert(0, sys.argv[1])
        from tiny_models import tiny_config
        from mlip_cli.models import ModelConfig
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            ModelConfig.from_dict(tiny_config("tdn", channels=4096, num_interactions=6, lmax=6))
        except Exception as err:
            print(type(err).__name__, err)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
        """
    )
    tests_dir = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", script, tests_dir], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert out[0].startswith("ConfigError model config: channels=4096")
    assert int(out[1]) < 50_000  # KiB: the model (~1e10 parameters) was never built


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_file_with_code_is_refused_without_unsafe_advice(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"kind": "mlip-checkpoint", "schema": CHECKPOINT_SCHEMA, "model_state": Evil()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message == (
        f"{path}: not a readable mlip checkpoint (it holds code or objects mlip does not load; "
        f"an mlip checkpoint holds only tensors and plain values)"
    )
    assert "weights_only" not in message and "this must never run" not in capsys.readouterr().out
