"""mlip: machine-learning interatomic potentials with fast low-rank equivariant tensor products."""

from ._version import __version__

__all__ = ["__version__", "MLIPCalculator"]


def __getattr__(name: str):
    # Lazy: ``import mlip_cli`` (and so ``mlip --help``) must not import torch or ASE's calculators.
    if name == "MLIPCalculator":
        from .calculator import MLIPCalculator

        return MLIPCalculator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
