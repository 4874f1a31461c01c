"""Data formats, readers/writers, neighbour lists, batching and statistics for mlip.

Never imports ``mlip_cli`` or ``mlip_kernels``. Heavy modules (torch, ase, lmdb, h5py) load on first use.
"""

from .errors import DataError
from .keys import LabelKeys
from .record import Structure

__all__ = [
    "DataError",
    "LabelKeys",
    "Structure",
    "Reader",
    "open_dataset",
    "write_dataset",
    "detect_format",
    "format_names",
    "atoms_to_structure",
    "structure_to_atoms",
]

# public name -> module that defines it, imported on first use
_LAZY = {
    "open_dataset": ".io",
    "write_dataset": ".io",
    "detect_format": ".io",
    "Reader": ".formats",
    "format_names": ".formats",
    "atoms_to_structure": ".ase_convert",
    "structure_to_atoms": ".ase_convert",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
