"""Configs (one class per family), registry, flat-config migration, checkpoint round trip, dtypes, energy
constants and user errors."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from models_testlib import ELEMENTS, tiny_config

from mlip_cli.errors import UsageError
from mlip_cli.models import (
    MODELS,
    ConfigError,
    ModelConfig,
    Potential,
    build_model,
    config_class,
    get_model_class,
    register_model,
    registered_families,
)
from mlip_cli.models import registry as registry_module
from mlip_cli.models.config import migrate_flat_config
from mlip_cli.models.equivariant import CGConfig, EquivariantConfig, GauntConfig, TDNConfig
from mlip_cli.models.transip import TransIPConfig
from mlip_datasets.graph import collate_graphs

ALL_FAMILIES = registered_families()

# The keys each family takes (the split of the former flat config, written out as the oracle).
COMMON_KEYS = {
    "family",
    "elements",
    "cutoff",
    "channels",
    "num_interactions",
    "num_radial",
    "radial_hidden",
    "radial_layers",
    "envelope_p",
    "readout_hidden",
    "scale",
    "shift",
    "e0s",
    "charge_spin",
    "ensemble",
}
BACKBONE_KEYS = COMMON_KEYS | {"lmax", "avg_num_neighbors", "message_backend"}
FAMILY_KEYS = {
    "tdn": BACKBONE_KEYS | {"cp_rank"},
    "gaunt": BACKBONE_KEYS | {"gaunt_grid"},
    "cg": BACKBONE_KEYS,
    "transip": COMMON_KEYS
    | {"num_heads", "ff_hidden", "vector_channels", "frame_averaging", "equivariance", "contrastive_temperature"},
}


def test_from_dict_rejects_unknown_key_naming_it_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({**tiny_config("tdn"), "chanels": 16})
    msg = str(err.value)
    assert "'chanels'" in msg and "allowed keys" in msg and "channels" in msg and "num_interactions" in msg
    assert isinstance(err.value, UsageError)  # shown by the CLI as one line


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"channels": 0}, "channels must be positive"),
        ({"lmax": 1.5}, "lmax must be an integer"),
        ({"cutoff": "far"}, "cutoff must be a number"),
        ({"elements": []}, "'elements' is empty"),
        ({"elements": ["Cu", "Xx"]}, "unknown element symbol 'Xx'"),
        ({"e0s": {92: -1.0}}, "e0s given for elements [92]"),
        ({"family": "transformer"}, f"unknown family 'transformer'; available: {', '.join(ALL_FAMILIES)}"),
        ({"lmax": -1}, "lmax must be >= 0"),
        ({"avg_num_neighbors": 0}, "avg_num_neighbors must be positive"),
        ({"cp_rank": 0}, "cp_rank must be a positive integer or null"),
    ],
)
def test_bad_values_are_reported_by_name(changes, words):
    with pytest.raises(ConfigError, match=None) as err:
        build_model({**tiny_config("tdn"), **changes})
    assert words in str(err.value)


def test_registry_and_symbols():
    assert {"tdn", "gaunt", "cg", "transip"} <= set(MODELS)
    for fam in ALL_FAMILIES:
        assert get_model_class(fam).family == fam == config_class(fam).family
        assert get_model_class(fam).config_class is config_class(fam)
    cfg = ModelConfig.from_dict({"family": "gaunt", "elements": ["H", "O", 29], "e0s": {"1": -13.6, "O": -2.0}})
    assert cfg.elements == [1, 8, 29] and cfg.e0s == {1: -13.6, 8: -2.0}


@pytest.mark.parametrize("family", ALL_FAMILIES)
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


def test_each_family_has_its_own_config_class_and_keys():
    classes = {"tdn": TDNConfig, "gaunt": GauntConfig, "cg": CGConfig, "transip": TransIPConfig}
    for family, cls in classes.items():
        assert config_class(family) is cls and set(cls.allowed_keys()) == FAMILY_KEYS[family]
        config = ModelConfig.from_dict(tiny_config(family))
        assert type(config) is cls and config.family == family
        assert set(config.to_dict()) == FAMILY_KEYS[family]
    assert type(ModelConfig.from_dict({"elements": [1]})) is TDNConfig  # no family: tdn, as before the split
    assert TDNConfig(elements=[8]).to_dict()["family"] == "tdn"


@pytest.mark.parametrize(
    "family,key",
    [
        ("tdn", "num_heads"),
        ("tdn", "gaunt_grid"),
        ("gaunt", "cp_rank"),
        ("cg", "cp_rank"),
        ("transip", "lmax"),
        ("transip", "avg_num_neighbors"),
    ],
)
def test_a_key_of_another_family_is_rejected_with_the_familys_allowed_keys(family, key):
    with pytest.raises(ConfigError) as err:
        build_model({**tiny_config(family), key: 1})
    msg = str(err.value)
    assert f"unknown key {key!r} for family {family!r}" in msg
    allowed = msg.split("allowed keys: ")[1].split(", ")
    assert set(allowed) == FAMILY_KEYS[family]


def test_config_class_names_the_known_families():
    with pytest.raises(ConfigError) as err:
        config_class("mace")
    assert str(err.value).endswith(f"unknown family 'mace'; available: {', '.join(ALL_FAMILIES)}")
    assert {"cg", "gaunt", "tdn", "transip"} <= set(ALL_FAMILIES)


def test_replace_validates_and_keeps_the_family_class():
    config = ModelConfig.from_dict(tiny_config("transip", num_heads=2))
    wider = config.replace(channels=16, num_heads=4)
    assert type(wider) is TransIPConfig and (wider.channels, wider.num_heads) == (16, 4) and config.channels == 8
    with pytest.raises(ConfigError, match=r"num_heads \(3\) must divide channels \(8\)"):
        config.replace(num_heads=3)
    with pytest.raises(ConfigError, match="does not take a TDNConfig"):
        TDNConfig.from_dict(tiny_config("gaunt"))
    with pytest.raises(TypeError, match="not a registered family"):
        EquivariantConfig(elements=[1])


# Configs as the single flat ModelConfig.to_dict() wrote them before the split (every family's fields), and
# (state_dict entries, elements) of the model the pre-split code built from each.
_FLAT_TDN = {
    "family": "tdn",
    "elements": [1, 8, 29],
    "cutoff": 3.5,
    "channels": 8,
    "lmax": 2,
    "num_interactions": 3,
    "num_radial": 6,
    "radial_hidden": 16,
    "radial_layers": 2,
    "envelope_p": 6,
    "readout_hidden": 8,
    "cp_rank": 12,
    "gaunt_grid": "auto",
    "avg_num_neighbors": 12.0,
    "scale": 2.0,
    "shift": 0.1,
    "e0s": {1: -13.6, 8: -2.0},
    "message_backend": "auto",
    "num_heads": 4,
    "ff_hidden": None,
    "vector_channels": 8,
    "frame_averaging": False,
}
FLAT = {
    "tdn": (_FLAT_TDN, (49, 4486)),
    "gaunt": ({**_FLAT_TDN, "family": "gaunt", "cp_rank": None, "gaunt_grid": "gl"}, (49, 4918)),
    "cg": ({**_FLAT_TDN, "family": "cg", "cp_rank": None}, (43, 4711)),
    "transip": (
        {
            **_FLAT_TDN,
            "family": "transip",
            "cp_rank": None,
            "num_heads": 2,
            "ff_hidden": 16,
            "vector_channels": 2,
            "frame_averaging": True,
        },
        (67, 4238),
    ),
}


@pytest.mark.parametrize("family", FLAT)
def test_migrated_flat_config_builds_the_same_model(family):
    flat, (entries, elements) = FLAT[family]
    migrated = migrate_flat_config(flat)
    assert migrated == {k: v for k, v in flat.items() if k in FAMILY_KEYS[family]}
    assert migrate_flat_config(migrated) == migrated  # idempotent: safe on a config already in the new form
    with pytest.raises(ConfigError, match="unknown key"):
        build_model(flat)  # the flat form itself names fields the family does not have
    state = build_model(migrated, dtype=torch.float64).state_dict()
    assert (len(state), sum(t.numel() for t in state.values())) == (entries, elements)
    fresh = build_model(migrated, dtype=torch.float64)
    fresh.load_state_dict(state)  # strict: same keys and shapes
    added = {"charge_spin": False, "ensemble": 1}  # fields added since take their defaults
    if family == "transip":
        added |= {"equivariance": "alignment", "contrastive_temperature": 0.1}
    assert fresh.config.to_dict() == {**migrated, **added}


def test_migration_keeps_keys_that_were_never_config_fields():
    """A key no config ever had is kept, so from_dict still reports it instead of it vanishing."""
    assert migrate_flat_config({"family": "cg", "chanels": 8, "cp_rank": None}) == {"family": "cg", "chanels": 8}
    with pytest.raises(ConfigError, match="unknown family 'nope'"):
        migrate_flat_config({"family": "nope"})


def test_families_declare_whether_they_are_exactly_equivariant():
    assert {"tdn", "gaunt", "cg"} <= set(registered_families(exactly_equivariant=True))
    assert "transip" in registered_families(exactly_equivariant=False)
    for fam in ALL_FAMILIES:
        assert (fam in registered_families(exactly_equivariant=True)) is get_model_class(fam).exactly_equivariant


def test_a_new_family_registers_from_its_own_module_alone(monkeypatch):
    """What a new module needs: a config class and a registered Potential; nothing else changes."""
    monkeypatch.setattr(registry_module, "MODELS", dict(MODELS))  # the new family leaves with the test

    @dataclass
    class PairConfig(ModelConfig):
        strength: float = 1.0

    @register_model("pair", config=PairConfig, exactly_equivariant=True)
    class PairPotential(Potential):
        def __init__(self, config):
            super().__init__(config)
            self.weight = torch.nn.Parameter(torch.tensor(config.strength))

        def interaction_energies(self, species, vectors, src, dst, num_atoms):
            e = self.weight * vectors.norm(dim=-1)
            return e.new_zeros(num_atoms).index_add(0, dst, e)

    model = build_model({"family": "pair", "elements": [1, 8], "strength": 3})
    assert type(model) is PairPotential and type(model.config) is PairConfig and model.config.strength == 3.0
    from mlip_datasets.graph import collate_graphs, structure_to_graph
    from mlip_datasets.record import Structure

    water = Structure(numbers=[8, 1, 1], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], charge=1.0)
    out = model(collate_graphs([structure_to_graph(water, model.cutoff, torch.float32)]))  # the plain signature runs
    assert torch.isfinite(out["energy"]).all() and out["forces"].shape == (3, 3)
    assert "pair" in registered_families(exactly_equivariant=True) and config_class("pair") is PairConfig
    with pytest.raises(ConfigError, match="unknown key 'lmax' for family 'pair'"):
        build_model({"family": "pair", "elements": [1], "lmax": 2})
    with pytest.raises(ValueError, match="already registered to family 'pair'"):
        register_model("pair2", config=PairConfig, exactly_equivariant=True)
    with pytest.raises(ValueError, match="'pair' is already registered"):
        register_model("pair", config=type("OtherConfig", (ModelConfig,), {}), exactly_equivariant=True)(
            type("Other", (Potential,), {})
        )
    with pytest.raises(TypeError, match="exactly_equivariant must be True or False"):
        register_model("pair3", config=PairConfig, exactly_equivariant=None)
