"""Configs, registry, checkpoint round trip, dtypes, energy constants and user errors."""

from __future__ import annotations

import io

import pytest
import torch
from models_testlib import ELEMENTS, FAMILIES, tiny_config

from mlip_cli.errors import UsageError
from mlip_cli.models import MODELS, ConfigError, ModelConfig, build_model, get_model_class
from mlip_datasets.graph import collate_graphs


def test_from_dict_rejects_unknown_key_naming_it_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({**tiny_config("tdn"), "chanels": 16})
    msg = str(err.value)
    assert "'chanels'" in msg and "allowed keys" in msg and "channels" in msg and "num_interactions" in msg
    assert isinstance(err.value, UsageError)  # shown by the CLI as one line


@pytest.mark.parametrize("changes,words", [
    ({"channels": 0}, "channels must be positive"),
    ({"lmax": 1.5}, "lmax must be an integer"),
    ({"cutoff": "far"}, "cutoff must be a number"),
    ({"elements": []}, "'elements' is empty"),
    ({"elements": ["Cu", "Xx"]}, "unknown element symbol 'Xx'"),
    ({"e0s": {92: -1.0}}, "e0s given for elements [92]"),
    ({"family": "transformer"}, "unknown family 'transformer'; available: cg, gaunt, tdn"),
])
def test_bad_values_are_reported_by_name(changes, words):
    with pytest.raises(ConfigError, match=None) as err:
        build_model({**tiny_config("tdn"), **changes})
    assert words in str(err.value)


def test_registry_and_symbols():
    assert {"tdn", "gaunt", "cg"} <= set(MODELS)
    for fam in FAMILIES:
        assert get_model_class(fam).family == fam
    cfg = ModelConfig.from_dict({"family": "gaunt", "elements": ["H", "O", 29], "e0s": {"1": -13.6, "O": -2.0}})
    assert cfg.elements == [1, 8, 29] and cfg.e0s == {1: -13.6, 8: -2.0}


@pytest.mark.parametrize("family", FAMILIES)
def test_config_and_state_round_trip_through_plain_data(family, graphs):
    """A checkpoint stores config.to_dict() and the state dict; both load with weights_only=True."""
    torch.manual_seed(0)
    model = build_model(tiny_config(family), dtype=torch.float64).eval()
    model.set_statistics(e0s={29: -3.5, 79: -3.0}, scale=2.0, shift=0.1)
    buf = io.BytesIO()
    torch.save({"config": model.config.to_dict(), "state": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert ckpt["config"]["e0s"] == {29: -3.5, 79: -3.0} and ckpt["config"]["scale"] == 2.0
    assert ModelConfig.from_dict(ckpt["config"]) == model.config
    again = build_model(ckpt["config"], dtype=torch.float64).eval()
    again.load_state_dict(ckpt["state"])
    batch = collate_graphs([graphs["slab"], graphs["bulk"]])
    a, b = model(batch, compute_stress=True), again(batch, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_energy_constants(graphs):
    """Per-atom energy = scale * e_int + shift + E0[Z]; totals sum over each structure's atoms."""
    torch.manual_seed(0)
    model = build_model(tiny_config("gaunt"), dtype=torch.float64).eval()
    batch = collate_graphs([graphs["molecule"], graphs["bulk"]])
    base = model(batch, compute_forces=False)
    e0s = {z: -float(z) for z in ELEMENTS}
    model.set_statistics(e0s=e0s, scale=3.0, shift=0.5)
    out = model(batch)
    e0 = torch.tensor([e0s[int(z)] for z in batch.numbers], dtype=torch.float64)
    torch.testing.assert_close(out["node_energy"], 3.0 * base["node_energy"] + 0.5 + e0)
    torch.testing.assert_close(out["energy"], torch.stack([out["node_energy"][:6].sum(), out["node_energy"][6:].sum()]))


def test_float32_default_and_float64_inputs(graphs):
    model = build_model(tiny_config("tdn")).eval()
    assert model.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())
    batch = collate_graphs([graphs["slab"]])  # float64 data: cast to the model dtype
    with torch.no_grad():  # forces still work: gradients are enabled inside forward
        out = model(batch, compute_stress=True)
    # energies are summed in float64 (large per-atom references), forces stay in the model dtype
    assert out["energy"].dtype == torch.float64 and out["forces"].dtype == torch.float32
    assert out["forces"].shape == (batch.num_atoms, 3)
    assert not out["forces"].requires_grad and torch.isfinite(out["stress"]).all()
    ref = build_model(tiny_config("tdn"), dtype=torch.float64).eval()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    torch.testing.assert_close(out["energy"].double(), ref(batch)["energy"], rtol=1e-5, atol=1e-5)


def test_unknown_element_is_a_clear_error(graphs):
    model = build_model(tiny_config("cg", elements=[1, 6, 8])).eval()
    with pytest.raises(ValueError, match=r"elements \[46\] are not in the model's element list \[1, 6, 8\]"):
        model(collate_graphs([graphs["slab"]]))
