"""Registry of model families by name, and ``build_model``."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from .config import ConfigError, ModelConfig

__all__ = ["MODELS", "register_model", "get_model_class", "build_model"]

#: name -> model class (each a :class:`~mlip_cli.models.potential.Potential` taking a ModelConfig).
MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make ``name`` buildable by :func:`build_model` (``ModelConfig.family``)."""

    def deco(cls: type) -> type:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered to {MODELS[name].__qualname__}")
        MODELS[name] = cls
        cls.family = name
        return cls

    return deco


def get_model_class(name: str) -> type:
    """The class registered as ``name``; :class:`ConfigError` listing the known families otherwise."""
    from . import equivariant, transip  # noqa: F401  (registers the built-in families)

    if name not in MODELS:
        raise ConfigError(f"model config: unknown family {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(config: ModelConfig | Mapping[str, Any], dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.nn.Module:
    """Build the model a config describes (float32 by default; ``torch.float64`` for exact checks).

    Args:
        config: a :class:`ModelConfig` or its plain-dict form (e.g. ``model.config.to_dict()`` from a
            checkpoint, or a recipe's ``model:`` section; unknown keys are an error).
        dtype: floating-point dtype of parameters and constants.
        device: where to put the model.
    """
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    model = get_model_class(config.family)(config)
    return model.to(dtype=dtype, device=device)
