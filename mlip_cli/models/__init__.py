"""mlip models: typed configs, a registry of families, and the energy/forces/stress potential wrapper.

    from mlip_cli.models import ModelConfig, build_model
    model = build_model({"family": "tdn", "elements": ["H", "C", "O", "Cu"], "cutoff": 5.0})
    out = model(batch, compute_forces=True, compute_stress=True)   # energy [B], forces [N,3], stress [B,3,3]
"""

from .config import ConfigError, ModelConfig
from .equivariant import CGPotential, EquivariantPotential, GauntPotential, TDNPotential
from .potential import Potential
from .registry import MODELS, build_model, get_model_class, register_model
from .soft_equivariance import AutoSymmetryWeights, random_rotate_batch
from .transip import TransIPPotential

__all__ = [
    "MODELS",
    "AutoSymmetryWeights",
    "CGPotential",
    "ConfigError",
    "EquivariantPotential",
    "GauntPotential",
    "ModelConfig",
    "Potential",
    "TDNPotential",
    "TransIPPotential",
    "build_model",
    "get_model_class",
    "random_rotate_batch",
    "register_model",
]
