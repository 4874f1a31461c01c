"""Registry of model families by name (model class, config class, declared symmetry), and ``build_model``.

A family registers itself in its own module (``@register_model("tdn", config=TDNConfig,
exactly_equivariant=True)``); the package ``__init__`` imports every module of :mod:`mlip_cli.models`, so a
new family is one new module and nothing here changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .config import ConfigError, ModelConfig
from .ensemble import EnsemblePotential

__all__ = ["MODELS", "register_model", "get_model_class", "config_class", "registered_families", "build_model"]

#: name -> model class (each a :class:`~mlip_cli.models.potential.Potential` taking its family's config).
MODELS: dict[str, type] = {}


def register_model(name: str, *, config: type[ModelConfig], exactly_equivariant: bool) -> Callable[[type], type]:
    """Class decorator: make ``name`` buildable by :func:`build_model`.

    Sets ``cls.family`` and ``config.family`` to ``name``, ``cls.config_class`` to ``config`` and
    ``cls.exactly_equivariant``.

    Args:
        name: the family name (``family`` in a config mapping).
        config: the family's :class:`ModelConfig` subclass (one class per family).
        exactly_equivariant: whether the energy is O(3)-invariant and E(3)-equivariant by construction (to
            rounding or a documented fit error), which the exact-symmetry tests check; ``False`` for models
            that learn the symmetry.
    """
    if not (isinstance(config, type) and issubclass(config, ModelConfig)) or config is ModelConfig:
        raise TypeError(f"model family {name!r}: config must be a ModelConfig subclass, got {config!r}")
    if not isinstance(exactly_equivariant, bool):
        raise TypeError(f"model family {name!r}: exactly_equivariant must be True or False")
    owner = config.__dict__.get("family")
    if owner not in (None, name):
        raise ValueError(f"config class {config.__qualname__} is already registered to family {owner!r}")

    def deco(cls: type) -> type:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered to {MODELS[name].__qualname__}")
        MODELS[name] = cls
        cls.family, cls.config_class, cls.exactly_equivariant = name, config, exactly_equivariant
        config.family = name
        return cls

    return deco


def get_model_class(name: str) -> type:
    """The class registered as ``name``; :class:`ConfigError` listing the known families otherwise."""
    if name not in MODELS:
        raise ConfigError(f"model config: unknown family {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def config_class(family: str) -> type[ModelConfig]:
    """The config class of ``family`` (e.g. to list its keys: ``config_class("tdn").allowed_keys()``);
    :class:`ConfigError` listing the known families otherwise."""
    return get_model_class(family).config_class


def registered_families(exactly_equivariant: bool | None = None) -> tuple[str, ...]:
    """Registered family names, sorted; only those that declared ``exactly_equivariant`` so when it is given."""
    return tuple(
        name
        for name, cls in sorted(MODELS.items())
        if exactly_equivariant is None or cls.exactly_equivariant == exactly_equivariant
    )


def build_model(
    config: ModelConfig | Mapping[str, Any],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.nn.Module:
    """Build the model a config describes (float32 by default; ``torch.float64`` for exact checks): an
    :class:`~mlip_cli.models.ensemble.EnsemblePotential` of ``config.ensemble`` members when that is above 1.

    Args:
        config: a family's config or its plain-dict form (e.g. ``model.config.to_dict()`` from a
            checkpoint, or a recipe's ``model:`` section; keys the family does not have are an error).
        dtype: floating-point dtype of parameters and constants.
        device: where to put the model.
    """
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    model_class = get_model_class(config.family)
    if config.ensemble > 1:
        return EnsemblePotential(config, model_class).to(dtype=dtype, device=device)
    return model_class(config).to(dtype=dtype, device=device)
