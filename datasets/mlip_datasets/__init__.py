"""Data formats, readers/writers, neighbour lists, batching and statistics for mlip.

Never imports ``mlip_cli`` or ``mlip_kernels``. Heavy modules (torch, ase, lmdb, h5py) load on first use.
"""

from .errors import DataError
from .keys import LabelKeys
from .record import Structure

__all__ = ["DataError", "LabelKeys", "Structure", "open_dataset", "write_dataset", "detect_format"]


def __getattr__(name):
    if name in ("open_dataset", "write_dataset", "detect_format"):
        from . import io

        return getattr(io, name)
    raise AttributeError(name)
