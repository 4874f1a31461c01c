"""mlip: machine-learning interatomic potentials with fast low-rank equivariant tensor products."""

from ._version import __version__

__all__ = ["__version__", "MLIPCalculator", "MLIPModel", "load_model", "predict_file", "predict_labels"]

# public name -> module that defines it; imported on first use: ``import mlip_cli`` (and so ``mlip --help``)
# must not import torch or ASE's calculators
_LAZY = {
    "MLIPCalculator": ".calculator",
    "MLIPModel": ".torchsim",  # TorchSim model interface; needs the torchsim extra
    "load_model": ".checkpoint",
    "predict_file": ".predict",
    "predict_labels": ".predict",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
