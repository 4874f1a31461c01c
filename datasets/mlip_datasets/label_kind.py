"""What a data set's energy labels mean: the energy kind and whether labels belong to the stored positions.

Data-set level contract (every reader of :mod:`mlip_datasets.formats` reports both keys in ``metadata()``):

- ``energy_kind``: ``"total"`` (unreferenced DFT energies), ``"adsorption"`` (OC20 convention: minus slab and
  gas-phase references), ``"oc22_total"`` (OC22 total energies) or ``None`` when the source does not say (or
  its records disagree).
- ``labels_at_positions``: ``False`` when the energy (and any forces) belong to another geometry than the
  stored positions -- OC20 IS2RE records pair ``y_relaxed`` with the *initial* positions; ``True`` otherwise.

Per record the same facts travel in ``Structure.info`` (so any writer keeps them, and formats without a
data-set header, extxyz and ASE SQLite, carry them per frame): ``info["energy_kind"]`` (one of
:data:`ENERGY_KINDS`) and ``info["labels_at_positions"] = False`` (only written when False). A record whose
``info["energy_key"]`` is ``"y_relaxed"`` (the OC20 reader's marker) counts as not at its positions too.
A set of records has an energy kind only when every record names the same one; its labels are at their
positions only when no record says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .record import Structure

ENERGY_KINDS = ("total", "adsorption", "oc22_total")
ENERGY_KIND_KEY = "energy_kind"
AT_POSITIONS_KEY = "labels_at_positions"


@dataclass(frozen=True)
class LabelKind:
    """The two data-set facts of the module docstring; the defaults are what a source that says nothing gets."""

    energy_kind: str | None = None
    labels_at_positions: bool = True

    def as_metadata(self) -> dict:
        """The two ``metadata()`` keys."""
        return {ENERGY_KIND_KEY: self.energy_kind, AT_POSITIONS_KEY: self.labels_at_positions}

    def stamp(self, s: Structure) -> Structure:
        """Write these facts into ``s.info`` (in place, keeping a kind the record states itself); returns ``s``."""
        if self.energy_kind is not None and record_label_kind(s).energy_kind is None:
            s.info[ENERGY_KIND_KEY] = self.energy_kind
        if not self.labels_at_positions:
            s.info[AT_POSITIONS_KEY] = False
        return s


def _is_false(value) -> bool:
    return isinstance(value, bool | np.bool_) and not value


def record_label_kind(s: Structure) -> LabelKind:
    """What one record's ``info`` says (see the module docstring)."""
    return info_label_kind(s.info)


def info_label_kind(info: dict) -> LabelKind:
    """What a record's ``info`` (or an ``ase.Atoms.info``) says."""
    kind = info.get(ENERGY_KIND_KEY)
    at_positions = not (_is_false(info.get(AT_POSITIONS_KEY)) or info.get("energy_key") == "y_relaxed")
    return LabelKind(kind if isinstance(kind, str) and kind in ENERGY_KINDS else None, at_positions)


class LabelKindTally:
    """Combines the label kinds of records as a writer streams them (:meth:`add`), for the data-set header."""

    def __init__(self) -> None:
        self._kinds: set[str | None] = set()
        self._at_positions = True

    def add(self, s: Structure) -> None:
        self.add_info(s.info)

    def add_info(self, info: dict) -> None:
        kind = info_label_kind(info)
        self._kinds.add(kind.energy_kind)
        self._at_positions &= kind.labels_at_positions

    def result(self) -> LabelKind:
        kind = next(iter(self._kinds)) if len(self._kinds) == 1 else None
        return LabelKind(kind, self._at_positions)


def combine(kinds: Iterable[LabelKind]) -> LabelKind:
    """One label kind for several parts (shards): a common energy kind, at positions only if all are."""
    kinds = list(kinds)
    names = {k.energy_kind for k in kinds}
    return LabelKind(next(iter(names)) if len(names) == 1 else None, all(k.labels_at_positions for k in kinds))


def from_metadata(meta: dict | None) -> LabelKind | None:
    """The label kind a stored header states (both keys present, valid values), else None."""
    if not isinstance(meta, dict) or ENERGY_KIND_KEY not in meta or AT_POSITIONS_KEY not in meta:
        return None
    kind, at_positions = meta[ENERGY_KIND_KEY], meta[AT_POSITIONS_KEY]
    valid_kind = kind is None or (isinstance(kind, str) and kind in ENERGY_KINDS)
    if not valid_kind or not isinstance(at_positions, bool | np.bool_):
        return None
    return LabelKind(kind, bool(at_positions))


def first_record_kind(reader) -> LabelKind:
    """What record 0 says (headerless sources); an empty set says nothing."""
    return record_label_kind(reader[0]) if len(reader) else LabelKind()


def label_kind(reader) -> tuple[str | None, bool]:
    """``(energy_kind, labels_at_positions)`` of an open data set, for training and checkpoints.

    Taken from ``reader.metadata()`` where the reader states both keys, else from record 0's ``info``.
    Training should refuse ``labels_at_positions=False`` as energy+force data (IS2RE) unless told otherwise,
    and store ``energy_kind`` in the checkpoint.
    """
    kind = from_metadata(reader.metadata()) or first_record_kind(reader)
    return kind.energy_kind, kind.labels_at_positions
