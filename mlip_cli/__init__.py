"""mlip: machine-learning interatomic potentials with fast low-rank equivariant tensor products."""

from ._version import __version__

__all__ = ["__version__"]
