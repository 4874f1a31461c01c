"""mlip models: typed configs, a registry of families, and the energy/forces/stress potential wrapper.

from mlip_cli.models import ModelConfig, build_model
model = build_model({"family": "tdn", "elements": ["H", "C", "O", "Cu"], "cutoff": 5.0})
out = model(batch, compute_forces=True, compute_stress=True)   # energy [B], forces [N,3], stress [B,3,3]
"""

import importlib
import pkgutil

from .config import ConfigError, ModelConfig
from .ensemble import EnsemblePotential, is_ensemble
from .equivariant import CGPotential, EquivariantPotential, GauntPotential, TDNPotential
from .potential import Potential
from .registry import MODELS, build_model, config_class, get_model_class, register_model, registered_families
from .soft_equivariance import random_rotate_batch
from .transip import TransIPPotential

# Every module of this package is imported, so each family registers itself where it is defined: a new
# family is a new module here, with no list of families to edit.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = [
    "MODELS",
    "CGPotential",
    "ConfigError",
    "EnsemblePotential",
    "EquivariantPotential",
    "GauntPotential",
    "ModelConfig",
    "Potential",
    "TDNPotential",
    "TransIPPotential",
    "build_model",
    "config_class",
    "get_model_class",
    "is_ensemble",
    "random_rotate_batch",
    "register_model",
    "registered_families",
]
