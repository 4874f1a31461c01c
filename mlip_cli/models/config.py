"""Typed model configuration: plain-dict round trip (for recipes and checkpoints) with strict keys.

:class:`ModelConfig` holds the fields every family reads; each family subclasses it in its own module with
only its own fields and checks, and registers the subclass with the model class
(``@register_model("tdn", config=TDNConfig, exactly_equivariant=True)``); ``ModelConfig.from_dict`` picks
the subclass from ``family``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import UsageError

__all__ = ["ModelConfig", "ConfigError", "DEFAULT_FAMILY", "FLAT_CONFIG_FIELDS", "migrate_flat_config"]

#: Most members an ensemble may have (each is a whole model in memory and in every step).
MAX_ENSEMBLE = 64

#: The family of a config mapping without a ``family`` key.
DEFAULT_FAMILY = "tdn"

#: Fields of the single flat config before it was split per family; checkpoints of that time store all of them.
FLAT_CONFIG_FIELDS = (
    "family",
    "elements",
    "cutoff",
    "channels",
    "lmax",
    "num_interactions",
    "num_radial",
    "radial_hidden",
    "radial_layers",
    "envelope_p",
    "readout_hidden",
    "cp_rank",
    "gaunt_grid",
    "avg_num_neighbors",
    "scale",
    "shift",
    "e0s",
    "message_backend",
    "num_heads",
    "ff_hidden",
    "vector_channels",
    "frame_averaging",
)


class ConfigError(UsageError, ValueError):
    """A model configuration a user wrote is wrong (unknown key, bad value); the message says which.

    A :class:`~mlip_cli.errors.UsageError`, so the CLI shows it as one line.
    """


def _atomic_number(z: Any) -> int:
    if isinstance(z, str) and not z.strip().isdigit():
        from ase.data import atomic_numbers

        if z.strip() not in atomic_numbers:
            raise ConfigError(f"model config: unknown element symbol {z!r} in 'elements'")
        return int(atomic_numbers[z.strip()])
    if isinstance(z, bool) or not float(z).is_integer():
        raise ConfigError(f"model config: elements must be atomic numbers or symbols, got {z!r}")
    return int(z)


def _numeric_kind(f: dataclasses.Field) -> tuple[type | None, bool]:
    """``(int, float or None; whether None is allowed)`` from a field's annotation (a string in modules with
    postponed evaluation of annotations, a type otherwise)."""
    name = (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))).replace(" ", "")
    return {"int": int, "float": float}.get(name.removesuffix("|None")), name.endswith("|None")


def _family_config(family: str) -> type[ModelConfig]:
    # The registry imports this module (ConfigError, ModelConfig), so it is looked up at call time.
    from .registry import config_class

    return config_class(family)


@dataclass
class ModelConfig:
    """Architecture and constants every family reads; a family's subclass adds its own fields.

    Build one with :meth:`from_dict` (it picks the family's class) or with a family's class directly
    (``TDNConfig(elements=[1, 8])``); the base class itself is not a family.

    Numeric fields are coerced by their annotation (``int``, ``float``, ``int | None``), so a subclass only
    declares its fields and adds its checks in :meth:`validate`.

    Attributes:
        family: registry name (class attribute, set by ``register_model``): ``"tdn"``, ``"gaunt"``, ``"cg"``,
            ``"transip"`` or any other registered family.
        elements: atomic numbers (symbols accepted by :meth:`from_dict`) in species-index order.
        cutoff: radial cutoff in Angstrom (graphs built with a larger cutoff also work: extra edges weigh 0).
        channels: feature channels ``C`` (``"transip"``: scalar columns of each token and attention width).
        num_interactions: number of interaction blocks (``"transip"``: Transformer layers).
        num_radial: Bessel functions in the radial basis.
        radial_hidden, radial_layers: width and depth of the radial MLP.
        envelope_p: exponent of the polynomial cutoff envelope (value, first and second derivative vanish).
        readout_hidden: width of the per-atom readout MLP.
        scale, shift: per-atom energy = scale * interaction energy + shift + E0[element].
        e0s: per-element reference energies ``{Z: eV}`` (e.g. fitted by least squares); missing ones are 0.
        charge_spin: condition on each structure's total charge and spin multiplicity (a learned vector added to
            every atom's initial features); training sets it when the data carries charge or spin.
        ensemble: number of independently initialised members trained and run together (1: a plain model;
            more: :class:`~mlip_cli.models.ensemble.EnsemblePotential`, whose spread is the uncertainty).
    """

    family: ClassVar[str] = ""

    elements: list[int] = field(default_factory=list)
    cutoff: float = 5.0
    channels: int = 32
    num_interactions: int = 2
    num_radial: int = 8
    radial_hidden: int = 64
    radial_layers: int = 2
    envelope_p: int = 6
    readout_hidden: int = 16
    scale: float = 1.0
    shift: float = 0.0
    e0s: dict[int, float] = field(default_factory=dict)
    charge_spin: bool = False
    ensemble: int = 1

    def __post_init__(self) -> None:
        if not type(self).family:
            raise TypeError(
                f"{type(self).__name__} is not a registered family's config; use "
                f"ModelConfig.from_dict or a family's config class"
            )
        self.elements = [_atomic_number(z) for z in self.elements]
        self.e0s = {_atomic_number(z): float(v) for z, v in dict(self.e0s or {}).items()}
        for f in dataclasses.fields(self):
            kind, optional = _numeric_kind(f)
            if kind is not None and not (optional and getattr(self, f.name) is None):
                setattr(self, f.name, self._number(f.name, kind))
        self.validate()

    def _number(self, name: str, kind: type):
        value = getattr(self, name)
        try:
            if isinstance(value, bool) or (kind is int and not float(value).is_integer()):
                raise TypeError
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"model config: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None

    def validate(self) -> None:
        """Check values; raises :class:`ConfigError` naming the field. Subclasses extend it (``super()`` first)."""
        if not self.elements:
            raise ConfigError("model config: 'elements' is empty; list the atomic numbers the model covers")
        if len(set(self.elements)) != len(self.elements):
            raise ConfigError(f"model config: duplicate entries in elements {self.elements}")
        extra = sorted(set(self.e0s) - set(self.elements))
        if extra:
            raise ConfigError(f"model config: e0s given for elements {extra} not in elements {self.elements}")
        if not isinstance(self.charge_spin, bool):
            raise ConfigError(f"model config: charge_spin must be true or false, got {self.charge_spin!r}")
        for name in ("cutoff", "channels", "num_interactions", "num_radial", "radial_hidden", "readout_hidden"):
            self._check_positive(name)
        if self.radial_layers < 0:
            raise ConfigError(f"model config: radial_layers must be >= 0, got {self.radial_layers}")
        if self.envelope_p < 2:
            raise ConfigError(f"model config: envelope_p must be >= 2, got {self.envelope_p}")
        if not 1 <= self.ensemble <= MAX_ENSEMBLE:
            raise ConfigError(f"model config: ensemble must be 1..{MAX_ENSEMBLE} members, got {self.ensemble}")

    def _check_positive(self, name: str) -> None:
        value = getattr(self, name)
        if not (value > 0 and math.isfinite(value)):  # NaN fails both comparisons
            raise ConfigError(f"model config: {name} must be positive and finite, got {value}")

    @property
    def num_elements(self) -> int:
        return len(self.elements)

    @classmethod
    def allowed_keys(cls) -> list[str]:
        """The keys a mapping for this class may hold (``family`` first)."""
        return ["family", *(f.name for f in dataclasses.fields(cls))]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build the config of ``data["family"]`` (default ``"tdn"``) from a plain mapping (recipe section or
        checkpoint); keys that family does not have are an error.

        Raises:
            ConfigError: an unknown family (listing the registered ones), unknown key(s) (naming them and the
                family's allowed keys), or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        family = str(data.get("family", cls.family or DEFAULT_FAMILY))
        target = _family_config(family)
        if not issubclass(target, cls):
            raise ConfigError(f"model config: family {family!r} does not take a {cls.__name__}")
        allowed = target.allowed_keys()
        unknown = [k for k in data if k not in allowed]
        if unknown:
            names = ", ".join(repr(k) for k in unknown)
            raise ConfigError(
                f"model config: unknown key{'s' if len(unknown) > 1 else ''} {names} for family "
                f"{family!r}; allowed keys: {', '.join(allowed)}"
            )
        return target(**{k: v for k, v in data.items() if k != "family"})

    @classmethod
    def check_recipe_section(cls, data: Mapping[str, Any]) -> None:
        """Validate a recipe's ``model`` mapping, which may leave ``elements`` out (training takes them from
        the data): the same checks as :meth:`from_dict`, with the elements of ``e0s`` (or hydrogen) standing in.

        Raises:
            ConfigError: as :meth:`from_dict`.
        """
        data = dict(data)
        if not data.get("elements"):
            e0s = data.get("e0s") or {}
            data["elements"] = sorted({_atomic_number(z) for z in e0s}) if isinstance(e0s, Mapping) and e0s else [1]
        cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (ints, floats, strings, lists, dicts), ``family`` first; ``from_dict`` inverts it."""
        d = {"family": self.family, **dataclasses.asdict(self)}
        d["elements"] = list(self.elements)
        d["e0s"] = dict(self.e0s)
        return d

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated; a new ``family`` gives that family's class)."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})


def migrate_flat_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict written before the per-family split (every family's fields) in its family's form.

    Drops the fields of :data:`FLAT_CONFIG_FIELDS` that ``data["family"]`` (default ``"tdn"``) does not have
    (they were never read by that family, so the model is the same) and keeps every other key, so a key that
    was never valid still fails in :meth:`ModelConfig.from_dict`. Returns a new dict; idempotent (a dict
    already in the new form comes back equal).

    Raises:
        ConfigError: ``data`` is not a mapping, or its family is not registered.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
    allowed = set(_family_config(str(data.get("family", DEFAULT_FAMILY))).allowed_keys())
    return {k: v for k, v in data.items() if k in allowed or k not in FLAT_CONFIG_FIELDS}
