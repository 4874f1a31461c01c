"""Typed model configuration: plain-dict round trip (for recipes and checkpoints) with strict keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import UsageError

__all__ = ["ModelConfig", "ConfigError"]


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


@dataclass
class ModelConfig:
    """Architecture and constants of a model. ``family`` picks the class from the registry.

    Attributes:
        family: registry name: ``"tdn"`` (CP low-rank TP), ``"gaunt"`` (grid TP), ``"cg"`` (dense CG) or
            ``"transip"`` (Transformer with learned equivariance).
        elements: atomic numbers (symbols accepted by :meth:`from_dict`) in species-index order.
        cutoff: radial cutoff in Angstrom (graphs built with a larger cutoff also work: extra edges weigh 0).
        channels: feature channels ``C`` (``"transip"``: scalar columns of each token and attention width).
        lmax: largest degree ``L`` of node features and edge harmonics.
        num_interactions: number of interaction blocks (``"transip"``: Transformer layers).
        num_radial: Bessel functions in the radial basis.
        radial_hidden, radial_layers: width and depth of the radial MLP.
        envelope_p: exponent of the polynomial cutoff envelope (value, first and second derivative vanish).
        readout_hidden: width of the per-atom readout MLP.
        cp_rank: CP rank of the even-path tensor for ``"tdn"`` (None: the exact default, 6/19/52/120/260/540 at
            L = 1..6). Only the middle blocks use it, so it matters from 3 interactions on.
        gaunt_grid: sphere quadrature for ``"gaunt"``: ``"auto"``, ``"lebedev"`` or ``"gl"``.
        avg_num_neighbors: messages are divided by its square root (set from the data statistics).
        scale, shift: per-atom energy = scale * interaction energy + shift + E0[element].
        e0s: per-element reference energies ``{Z: eV}`` (e.g. fitted by least squares); missing ones are 0.
        message_backend: rank-space kernel backend (``"auto"``, ``"torch"``, ``"compile"``, ``"triton"``,
            ``"naive"``); a runtime choice that never changes the numbers a checkpoint gives.
        num_heads: ``"transip"``: attention heads (must divide ``channels``).
        ff_hidden: ``"transip"``: hidden width of the feed-forward layers (None: twice the token width
            ``channels + 3 * vector_channels``).
        vector_channels: ``"transip"``: Cartesian vector (``1o``) columns per token, besides the scalars (0: none).
        frame_averaging: ``"transip"``: average the energy over the 8 signed principal frames of each
            structure, making it exactly rotation- and reflection-invariant (8x the cost); a runtime switch
            that does not change the parameters.
    """

    family: str = "tdn"
    elements: list[int] = field(default_factory=list)
    cutoff: float = 5.0
    channels: int = 32
    lmax: int = 2
    num_interactions: int = 2
    num_radial: int = 8
    radial_hidden: int = 64
    radial_layers: int = 2
    envelope_p: int = 6
    readout_hidden: int = 16
    cp_rank: int | None = None
    gaunt_grid: str = "auto"
    avg_num_neighbors: float = 1.0
    scale: float = 1.0
    shift: float = 0.0
    e0s: dict[int, float] = field(default_factory=dict)
    message_backend: str = "auto"
    num_heads: int = 4
    ff_hidden: int | None = None
    vector_channels: int = 8
    frame_averaging: bool = False

    def __post_init__(self) -> None:
        self.family = str(self.family)
        self.elements = [_atomic_number(z) for z in self.elements]
        self.e0s = {_atomic_number(z): float(v) for z, v in dict(self.e0s or {}).items()}
        for name in ("cutoff", "avg_num_neighbors", "scale", "shift"):
            setattr(self, name, self._number(name, float))
        for name in ("channels", "lmax", "num_interactions", "num_radial", "radial_hidden", "radial_layers",
                     "envelope_p", "readout_hidden", "num_heads", "vector_channels"):
            setattr(self, name, self._number(name, int))
        if self.cp_rank is not None:
            self.cp_rank = self._number("cp_rank", int)
        if self.ff_hidden is not None:
            self.ff_hidden = self._number("ff_hidden", int)
        self.validate()

    def _number(self, name: str, kind: type):
        value = getattr(self, name)
        try:
            if isinstance(value, bool) or (kind is int and not float(value).is_integer()):
                raise TypeError
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"model config: {name} must be {'an integer' if kind is int else 'a number'}, "
                              f"got {value!r}") from None

    def validate(self) -> None:
        """Check values; raises :class:`ConfigError` naming the field."""
        if not self.elements:
            raise ConfigError("model config: 'elements' is empty; list the atomic numbers the model covers")
        if len(set(self.elements)) != len(self.elements):
            raise ConfigError(f"model config: duplicate entries in elements {self.elements}")
        extra = sorted(set(self.e0s) - set(self.elements))
        if extra:
            raise ConfigError(f"model config: e0s given for elements {extra} not in elements {self.elements}")
        positive = ("cutoff", "avg_num_neighbors", "channels", "num_interactions", "num_radial", "radial_hidden",
                    "readout_hidden", "num_heads")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.lmax < 0:
            raise ConfigError(f"model config: lmax must be >= 0, got {self.lmax}")
        if self.radial_layers < 0:
            raise ConfigError(f"model config: radial_layers must be >= 0, got {self.radial_layers}")
        if self.envelope_p < 2:
            raise ConfigError(f"model config: envelope_p must be >= 2, got {self.envelope_p}")
        if self.cp_rank is not None and self.cp_rank < 1:
            raise ConfigError(f"model config: cp_rank must be a positive integer or null, got {self.cp_rank}")
        if self.ff_hidden is not None and self.ff_hidden < 1:
            raise ConfigError(f"model config: ff_hidden must be a positive integer or null, got {self.ff_hidden}")
        if self.vector_channels < 0:
            raise ConfigError(f"model config: vector_channels must be >= 0, got {self.vector_channels}")
        if not isinstance(self.frame_averaging, bool):
            raise ConfigError(f"model config: frame_averaging must be true or false, got {self.frame_averaging!r}")
        if self.family == "transip" and self.channels % self.num_heads:
            raise ConfigError(f"model config: num_heads ({self.num_heads}) must divide channels ({self.channels}) "
                              f"for family 'transip'")

    @property
    def num_elements(self) -> int:
        return len(self.elements)

    @classmethod
    def allowed_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Build from a plain mapping (recipe section or checkpoint); unknown keys are an error.

        Raises:
            ConfigError: naming the unknown key(s) and listing the allowed ones, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        allowed = cls.allowed_keys()
        unknown = [k for k in data if k not in allowed]
        if unknown:
            names = ", ".join(repr(k) for k in unknown)
            raise ConfigError(f"model config: unknown key{'s' if len(unknown) > 1 else ''} {names}; "
                              f"allowed keys: {', '.join(allowed)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (ints, floats, strings, lists, dicts); ``from_dict`` inverts it."""
        d = dataclasses.asdict(self)
        d["elements"] = list(self.elements)
        d["e0s"] = dict(self.e0s)
        return d

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated)."""
        return ModelConfig.from_dict({**self.to_dict(), **changes})
