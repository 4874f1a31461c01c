"""Where labels live in a source file: user-configurable key names."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class LabelKeys:
    """Names under which a source stores each label.

    The defaults are the plain names. A reader looks the name up where its format keeps labels (an ASE
    calculator's results first, then ``info``/``arrays``; LMDB record attributes; HDF5 datasets). Legacy OC20
    names (``y``, ``force``, ``y_relaxed``, ``pos_relaxed``) are mapped by the OC20 reader itself.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    charge: str = "charge"
    spin: str = "spin"

    def is_default(self) -> bool:
        return self == LabelKeys()

    def as_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULT_KEYS = LabelKeys()
