"""Registry of data formats. Each module in this package defines ``FORMAT: Format``.

Modules are imported on first use so that ``mlip --help`` and light commands stay fast.
"""

from __future__ import annotations

import importlib

from .base import Format, Reader

# name -> module; order matters for detection (first match wins among formats sharing an extension)
_MODULES = {
    "native": "native",
    "oc20": "oc20_lmdb",
    "aselmdb": "aselmdb",
    "extxyz": "ase_files",
    "asedb": "ase_files",
    "hdf5": "hdf5",
    "ase": "ase_files",
}


def format_names() -> list[str]:
    return list(_MODULES)


def get_format(name: str) -> Format:
    """Return the :class:`Format` called ``name``; raises ``KeyError`` listing the known names."""
    if name not in _MODULES:
        raise KeyError(f"unknown format {name!r}; known formats: {', '.join(_MODULES)}")
    module = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    formats = getattr(module, "FORMATS", None) or {module.FORMAT.name: module.FORMAT}
    return formats[name]


def all_formats() -> list[Format]:
    return [get_format(name) for name in _MODULES]


__all__ = ["Format", "Reader", "all_formats", "format_names", "get_format"]
